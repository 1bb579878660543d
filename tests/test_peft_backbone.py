"""mmssf.PeftBackbone inside a whole model: pretrained weights survive the Runner's init."""
import pytest
import torch


@pytest.mark.parametrize('method', ['SSF', 'BitFit'])
def test_parent_init_cfg_does_not_overwrite_pretrained_backbone(tmp_path, method):
    """mmpretrain classifiers carry a model-level init_cfg (TruncNormal over every Linear); the
    Runner's ``model.init_weights()`` applies it to the backbone too, and the backbone must then
    reload its pretrained weights as the stock flow does. PEFT tensors stay as they were; the
    stock tensors a method trains (BitFit's biases) start from the pretrained values too."""
    import mmssf  # noqa: F401
    from mmengine.registry import init_default_scope
    from mmpretrain.models.backbones import VisionTransformer
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    arch = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
    torch.manual_seed(0)
    pretrained = VisionTransformer(arch=arch, img_size=32, patch_size=8)
    pretrained.init_weights()
    with torch.no_grad():  # no value the parent's init could write (its biases are 0)
        for p in pretrained.parameters():
            p.add_(torch.rand_like(p) + 0.5)
    torch.save(pretrained.state_dict(), tmp_path / 'pretrained.pth')
    model = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                      peft=dict(type=method), arch=arch, img_size=32, patch_size=8,
                      init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'pretrained.pth'))),
        head=dict(type='VisionTransformerClsHead', num_classes=5, in_channels=32),
        init_cfg=[dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
                  dict(type='Constant', layer='LayerNorm', val=1., bias=0.)]))
    ssf = {k: v.clone() for k, v in model.backbone.state_dict().items() if 'ssf_' in k}
    head_before = model.head.layers.head.weight.clone()
    model.init_weights()  # what Runner.train() does
    state = model.backbone.state_dict()
    for key, value in pretrained.state_dict().items():
        assert torch.equal(state[key], value), key
    assert all(torch.equal(state[k], v) for k, v in ssf.items())
    assert not torch.equal(model.head.layers.head.weight, head_before) or head_before.abs().sum() == 0
    assert model.backbone.is_init and 'init_weights' not in model.backbone.__dict__


def test_runner_init_keeps_stock_tensors_a_peft_checkpoint_loaded(tmp_path):
    """BitFit trains stock tensors (the biases): those a ``peft_checkpoint`` loaded at construction
    survive the Runner's init, which reloads the pretrained file over the backbone."""
    import mmssf  # noqa: F401
    from mmengine.registry import init_default_scope
    from mmpretrain.models.backbones import VisionTransformer
    from mmpretrain.registry import MODELS

    from mmssf.peft import apply_peft, save_peft
    init_default_scope('mmpretrain')
    arch = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
    torch.manual_seed(0)
    pretrained = VisionTransformer(arch=arch, img_size=32, patch_size=8)
    pretrained.init_weights()
    torch.save(pretrained.state_dict(), tmp_path / 'pretrained.pth')
    tuned = VisionTransformer(arch=arch, img_size=32, patch_size=8)
    apply_peft(tuned, dict(type='BitFit'))
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if p.requires_grad:
                p.uniform_(2.0, 3.0)
    save_peft(tuned, str(tmp_path / 'bitfit.pth'))
    biases = {n: p.detach().clone() for n, p in tuned.named_parameters() if p.requires_grad}
    model = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='mmssf.PeftBackbone', stock_type='VisionTransformer',
                      peft=dict(type='BitFit'), peft_checkpoint=str(tmp_path / 'bitfit.pth'),
                      arch=arch, img_size=32, patch_size=8,
                      init_cfg=dict(type='Pretrained',
                                    checkpoint=str(tmp_path / 'pretrained.pth'))),
        head=dict(type='VisionTransformerClsHead', num_classes=5, in_channels=32)))
    model.init_weights()  # what Runner.train() does
    state = model.backbone.state_dict()
    assert biases and all(torch.equal(state[n], v) for n, v in biases.items())
    for key, value in pretrained.state_dict().items():
        if key not in biases:
            assert torch.equal(state[key], value), key
