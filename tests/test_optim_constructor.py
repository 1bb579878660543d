"""PeftOptimWrapperConstructor: trainable parameters only, no decay on PEFT vectors,
paramwise_cfg honoured for the rest, one summary line."""
import torch


def _tuned_classifier():
    import mmssf  # noqa: F401
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                      peft=dict(type='SSF'), img_size=32, patch_size=8,
                      arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)),
        head=dict(type='VisionTransformerClsHead', num_classes=5, in_channels=32)))


def test_groups_decay_and_summary(monkeypatch):
    import mmssf.engine.optim_constructor as oc
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
    logged = []
    monkeypatch.setattr(oc, 'print_log', lambda msg, **kw: logged.append(msg))
    model = _tuned_classifier()
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='mmssf.PeftOptimWrapperConstructor',
        optim_wrapper_cfg=dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        paramwise_cfg=dict(custom_keys={'head': dict(lr_mult=0.1)})))
    optimizer = constructor(model).optimizer
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {names[id(g['params'][0])]: g for g in optimizer.param_groups}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(groups) == trainable and any('ssf_' in n for n in trainable)
    for name, group in groups.items():
        if 'ssf_' in name:
            assert group['weight_decay'] == 0.0, name
        else:
            assert group['weight_decay'] == 0.05, name
        assert group['lr'] == (1e-4 if name.startswith('head') else 1e-3), name
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen > 0 and len(logged) == 1
    assert f'{frozen:,} frozen parameters left out' in logged[0]
