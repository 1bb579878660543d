"""timm models tuned whole (the classifier inside trains with every method) and inside
``mmpretrain.TIMMBackbone``: the official SSF count and formula on timm's ViT; exact merge into
timm's own keys — loaded strictly by a fresh timm model in a process that never imports mmssf —
on the layouts of ``vit_base_patch16_224``, ``vit_base_patch14_reg4_dinov2`` (register tokens,
LayerScale), ``eva02_base_patch14_224`` (separate q / k / v, SwiGLU, rotary positions) and
``swin_tiny_patch4_window7_224`` (channels-last stages); the non-mergeable methods training and
refused at merge, or refused up front with the reason where they cannot act. (The tiny timm ViT is
also a row of the method × backbone matrix: ``conftest.BACKBONES['timm_vit']``.)"""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import randomize_peft
from mmssf.peft import MergeError, apply_peft, get_peft
from mmssf.peft.model_merge import merged_state_dict
from runner_utils import HANG_TIMEOUT

# name -> (timm model name, overrides making it tiny, input size): random init, classifier inside
MODELS = {
    'vit': ('vit_base_patch16_224', dict(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                         num_heads=2, mlp_ratio=2.0, num_classes=5), 32),
    # DINOv2's layout: 4 register tokens, LayerScale, position embedding on patches only
    'dinov2': ('vit_base_patch14_reg4_dinov2', dict(img_size=28, embed_dim=32, depth=2,
                                                    num_heads=2, mlp_ratio=2.0, num_classes=5),
               28),
    # EVA-02's: separate q / k / v (k without bias), SwiGLU MLP with its sub-LayerNorm, rotary
    # position embedding
    'eva02': ('eva02_base_patch14_224', dict(img_size=28, embed_dim=32, depth=2, num_heads=2,
                                             ref_feat_shape=(2, 2), num_classes=5), 28),
    # Swin-T's, two stages (patch merging at the second's start)
    'swin': ('swin_tiny_patch4_window7_224', dict(img_size=56, embed_dim=32, depths=(2, 2),
                                                  num_heads=(2, 4), num_classes=5), 56),
}
MERGEABLE = [dict(type='SSF'), dict(type='LoRA', targets=['qkv', 'proj', 'fc1', 'fc2'], r=4),
             dict(type='DoRA', r=4), dict(type='RLRR'), dict(type='SNELL', r=4),
             dict(type='BitFit'), dict(type='Linear'), dict(type='Full'),
             dict(type='FacTTT', r=4), dict(type='FacTTK', r=4), dict(type='GLoRA', r=2)]
REFUSED = [dict(type='VPTShallow', num_prompts=3), dict(type='VPTDeep', num_prompts=3),
           dict(type='Adapter', r=4), dict(type='Mona', r=8),
           dict(type='AdaptFormer', r=4), dict(type='AdapterPlus', r=4)]


def build(name, seed=0):
    import timm
    torch.manual_seed(seed)
    model_name, overrides, size = MODELS[name]
    model = timm.create_model(model_name, pretrained=False, **overrides).eval()
    return model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))


def test_ssf_count_on_vit_b16_with_a_100_class_head_is_the_official_one():
    """The SSF paper's (and its code's) 0.28M on ViT-B/16 + CIFAR-100: SSF 205,824 + head 76,900."""
    import timm
    model = timm.create_model('vit_base_patch16_224', pretrained=False, num_classes=100)
    method = apply_peft(model, dict(type='SSF'))
    assert method.num_trainable(model) == 282_724
    head = {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith(
        tuple(u.name + '.' for u in method.units))}
    assert head == {'head.weight', 'head.bias'}


def test_ssf_equals_the_official_formula():
    """The official SSF ViT (dongzelian/SSF models/vision_transformer.py): ``x * γ + β`` after
    the patch embedding, norm1, qkv, proj, norm2, fc1, fc2 and the final norm — written here as
    hooks on a stock copy holding the same γ, β."""
    model, x = build('vit')
    stock, _ = build('vit')
    method = apply_peft(model, dict(type='SSF'))
    randomize_peft(model)
    modules = dict(stock.named_modules())
    for unit in method.units:
        scale, shift = unit.scale.detach(), unit.shift.detach()
        modules[unit.name].register_forward_hook(
            lambda m, a, out, s=scale, b=shift: out * (s.view(-1, 1, 1) if out.dim() == 4 else s)
            + (b.view(-1, 1, 1) if out.dim() == 4 else b))
    stock.head.load_state_dict(model.head.state_dict())
    assert sorted(u.role for u in method.units) == sorted(
        ['patch_embed', 'final_norm'] + ['norm1', 'qkv', 'proj', 'norm2', 'fc1', 'fc2'] * 2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), stock(x), rtol=1e-5, atol=1e-6)


MERGE_NOT_SUPPORTED = {  # (model, method) -> (error, its message): EVA-02's SwiGLU and bias-free k
    ('eva02', 'FacTTT'): (ValueError, 'FacT needs a weight whose sizes are multiples of the token'),
    ('eva02', 'FacTTK'): (ValueError, 'FacT needs a weight whose sizes are multiples of the token'),
    ('eva02', 'GLoRA'): (MergeError, r"C and E add a bias, which this Linear lacks \(set C=E='none'"),
}


@pytest.mark.parametrize('name', sorted(MODELS))
@pytest.mark.parametrize('cfg', MERGEABLE, ids=lambda c: c['type'])
def test_merge_gives_timm_keys_and_the_tuned_outputs(name, cfg):
    model, x = build(name)
    stock_keys = list(model.state_dict())
    if (name, cfg['type']) in MERGE_NOT_SUPPORTED:
        error, match = MERGE_NOT_SUPPORTED[(name, cfg['type'])]
        with pytest.raises(error, match=match):
            apply_peft(model, cfg)
            merged_state_dict(model)
        return
    apply_peft(model, cfg)
    randomize_peft(model)
    with torch.no_grad():
        tuned = model(x)
        merged = merged_state_dict(model)
    assert list(merged) == stock_keys
    fresh, _ = build(name, seed=1)
    fresh.load_state_dict(merged, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), tuned, rtol=1e-5, atol=1e-5)


NOT_SUPPORTED = {  # (model, method) -> the clear error
    ('eva02', 'VPTShallow'): 'cannot prompt timm Eva: its attention applies a rotary position',
    ('eva02', 'VPTDeep'): 'cannot prompt timm Eva: its attention applies a rotary position',
    ('swin', 'VPTShallow'): "cannot prompt timm SwinTransformer: mmssf's Swin prompt flow",
    ('swin', 'VPTDeep'): "cannot prompt timm SwinTransformer: mmssf's Swin prompt flow",
    ('swin', 'Mona'): 'mmssf has no token map for timm SwinTransformer',
    ('swin', 'AdaptFormer'): 'mmssf has no token map for timm SwinTransformer',
    ('swin', 'AdapterPlus'): 'mmssf has no token map for timm SwinTransformer',
}


@pytest.mark.parametrize('name', ['dinov2', 'eva02', 'swin'])
@pytest.mark.parametrize('cfg', REFUSED, ids=lambda c: c['type'])
def test_non_mergeable_methods_train_and_are_refused(name, cfg):
    model, x = build(name)
    if (name, cfg['type']) in NOT_SUPPORTED:
        with pytest.raises((ValueError, TypeError), match=NOT_SUPPORTED[(name, cfg['type'])]):
            apply_peft(model, cfg)
        return
    method = apply_peft(model, cfg)
    model.train()
    out = model(x)
    assert out.shape == (2, 5)
    out.square().mean().backward()
    added = [(n, p) for n, p in model.named_parameters() if p.requires_grad
             and not n.startswith('head.')]
    assert added and all(p.grad is not None for _, p in added)
    with pytest.raises(MergeError, match='cannot be merged'):
        method.merge(model)


SCRIPT = '''
import json, sys, timm, torch
sd, x = torch.load(sys.argv[3], weights_only=True), torch.load(sys.argv[4])
model = timm.create_model(sys.argv[1], pretrained=False, **json.loads(sys.argv[2])).eval()
model.load_state_dict(sd, strict=True)
assert not any(m.startswith('mmssf') for m in sys.modules)
with torch.no_grad():
    torch.save(model(x), sys.argv[5])
'''


@pytest.mark.parametrize('name', ['dinov2', 'eva02', 'swin'])
def test_a_process_without_mmssf_loads_the_merged_weights_strictly(tmp_path, name):
    model, x = build(name)
    apply_peft(model, dict(type='SSF'))
    randomize_peft(model)
    with torch.no_grad():
        expected = model(x)
    torch.save(merged_state_dict(model), tmp_path / 'merged.pth')
    torch.save(x, tmp_path / 'x.pth')
    model_name, overrides, _ = MODELS[name]
    result = subprocess.run(
        [sys.executable, '-c', SCRIPT, model_name, json.dumps(overrides),
         str(tmp_path / 'merged.pth'), str(tmp_path / 'x.pth'), str(tmp_path / 'out.pth')],
        capture_output=True, text=True, timeout=HANG_TIMEOUT, env=dict(os.environ, PYTHONPATH=''))
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / 'out.pth'), expected, rtol=1e-5, atol=1e-5)


def test_peft_backbone_tunes_the_model_inside_mmpretrain_timm_backbone():
    """``mmssf.PeftBackbone(stock_type='mmpretrain.TIMMBackbone', model_name=...)``: the timm
    model inside is tuned, its keys keep the wrapper's prefix."""
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    backbone = MODELS.build(dict(
        type='mmssf.PeftBackbone', stock_type='TIMMBackbone',
        model_name='vit_tiny_patch16_224', img_size=32, peft=dict(type='SSF')))
    method = get_peft(backbone.timm_model)
    assert method is not None and type(method).__name__ == 'SSF'
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith('timm_model.') and '.ssf_' in n for n in trainable)
    out = backbone(torch.randn(1, 3, 32, 32))
    assert out[0].shape[-1] == 192


@pytest.mark.parametrize('fmt', ['pth', 'safetensors', 'npz'])
def test_timm_backbone_loads_a_local_checkpoint_of_each_format_then_tunes(tmp_path, fmt):
    """Weights come from files, never a hub: ``checkpoint_path=`` a ``.pth`` state dict, a
    ``.safetensors`` file or Google's ``.npz`` (written here), loaded by timm, then tuned."""
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS

    from test_converters import _write_google_npz
    source, _ = build('vit', seed=3)
    path = str(tmp_path / f'vit.{fmt}')
    if fmt == 'pth':
        torch.save(source.state_dict(), path)
    elif fmt == 'safetensors':
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    else:
        _write_google_npz(source, path)
    init_default_scope('mmpretrain')
    model_name, overrides, _ = MODELS['vit']
    backbone = MMPRETRAIN_MODELS.build(dict(
        type='mmssf.PeftBackbone', stock_type='TIMMBackbone', model_name=model_name,
        checkpoint_path=path, peft=dict(type='SSF'), **overrides))
    assert get_peft(backbone.timm_model) is not None
    loaded = backbone.timm_model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith('head'):  # (TIMMBackbone drops the classifier)
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=1e-6, msg=key)


# -- weights loaded in the wrapper's __init__ survive the Runner's init_weights ---------------
DINO_TINY = dict(img_size=28, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0)


def _tiny_checkpoint(tmp_path, model_name, overrides, seed=3):
    import timm
    torch.manual_seed(seed)
    source = timm.create_model(model_name, pretrained=False, **overrides)
    for p in source.parameters():  # far from any init timm or a parent init_cfg would draw
        p.data.uniform_(0.5, 1.5)
    path = str(tmp_path / 'timm.pth')
    torch.save(source.state_dict(), path)
    return path, {k: v for k, v in source.state_dict().items() if not k.startswith('head')}


def _assert_holds(state, prefix, checkpoint):
    """Every checkpoint tensor the wrapped model kept (timm's feature wrapper prunes the final
    norm) equals the checkpoint; every block tensor was kept."""
    kept = [k for k in checkpoint if prefix + k in state]
    assert {k for k in checkpoint if k.startswith('blocks.')} <= set(kept)
    for key in kept:
        assert torch.equal(state[prefix + key], checkpoint[key]), f'{prefix + key} was changed'


@pytest.mark.parametrize('parent_init', [False, True], ids=['no-parent-init', 'parent-init'])
@pytest.mark.parametrize('how', ['checkpoint_path', 'pretrained'])
def test_runner_init_keeps_the_checkpoint_mmpretrain_timm_backbone_loaded(tmp_path, how,
                                                                          parent_init):
    """``TIMMBackbone`` loads ``checkpoint_path`` / ``pretrained`` weights in its ``__init__``
    (and marks itself initialised); the Runner's ``model.init_weights()`` — after a classifier's
    model-level init_cfg or not — must leave exactly those weights, never timm's random init.
    PEFT tensors keep their values."""
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS
    model_name, overrides, _ = MODELS['vit']
    overrides = {k: v for k, v in overrides.items() if k != 'num_classes'}
    path, checkpoint = _tiny_checkpoint(tmp_path, model_name, overrides)
    source = (dict(checkpoint_path=path) if how == 'checkpoint_path' else
              dict(pretrained=True, pretrained_cfg_overlay=dict(file=path, num_classes=1000)))
    init_default_scope('mmpretrain')
    model = MMPRETRAIN_MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='mmssf.PeftBackbone', stock_type='TIMMBackbone',
                      model_name=model_name, peft=dict(type='SSF'), **source, **overrides),
        neck=dict(type='mmssf.TimmViTPool'),
        head=dict(type='LinearClsHead', num_classes=5, in_channels=32),
        init_cfg=[dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
                  dict(type='Constant', layer='LayerNorm', val=1., bias=0.)]
        if parent_init else None))
    _assert_holds(model.backbone.state_dict(), 'timm_model.', checkpoint)
    randomize_peft(model.backbone.timm_model)
    ssf = {k: v.clone() for k, v in model.backbone.state_dict().items() if '.ssf_' in k}
    model.init_weights()  # what Runner.train() does
    state = model.backbone.state_dict()
    _assert_holds(state, 'timm_model.', checkpoint)
    assert ssf and all(torch.equal(state[k], v) for k, v in ssf.items())


def test_runner_init_keeps_the_checkpoint_mmseg_timm_backbone_features_only(tmp_path):
    """mmseg's ``TIMMBackbone`` (``features_only=True``: timm's ``FeatureGetterNet`` around the
    ViT, multi-level maps from the chosen blocks) on a DINOv2 layout: tuned inside both wrappers,
    and its ``pretrained`` weights (a local file) survive ``init_weights``."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS as MMSEG_MODELS
    path, checkpoint = _tiny_checkpoint(tmp_path, 'vit_base_patch14_reg4_dinov2', DINO_TINY)
    init_default_scope('mmseg')
    backbone = MMSEG_MODELS.build(dict(
        type='mmssf.PeftBackbone', stock_type='TIMMBackbone',
        model_name='vit_base_patch14_reg4_dinov2', features_only=True, out_indices=(1, 3),
        pretrained=True, pretrained_cfg_overlay=dict(file=path), peft=dict(type='LoRA', r=2),
        **DINO_TINY))
    inner = backbone.timm_model.model
    assert type(inner).__name__ == 'VisionTransformer' and get_peft(inner) is not None
    _assert_holds(backbone.state_dict(), 'timm_model.model.', checkpoint)
    backbone.init_weights()  # what the Runner's model.init_weights() does to its backbone
    _assert_holds(backbone.state_dict(), 'timm_model.model.', checkpoint)
    maps = backbone(torch.randn(1, 3, 28, 28))
    assert [tuple(m.shape) for m in maps] == [(1, 32, 2, 2)] * 2


@pytest.mark.parametrize('name', ['vit', 'dinov2'])
def test_timm_vit_pool_gives_timm_pre_logits_after_timm_backbone_reset(name):
    """``TIMMBackbone`` resets timm's classifier and pooling (``reset_classifier(0, '')``): the
    model returns every token; ``mmssf.TimmViTPool`` pools them as timm's ``forward_head`` does
    (class token; DINOv2: after 4 registers, still token 0)."""
    import copy

    from mmssf.models import TimmViTPool
    model, x = build(name)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
        wrapped = copy.deepcopy(model)
        wrapped.reset_classifier(0, '')
        tokens = wrapped(x)
        assert tokens.dim() == 3 and tokens.shape[1] > 1
        torch.testing.assert_close(TimmViTPool()((tokens, ))[0], expected, rtol=0, atol=0)
    with pytest.raises(ValueError,
                       match=r"pool='cls' is no pooling; choose one of \('token', 'avg'\)"):
        TimmViTPool(pool='cls')
