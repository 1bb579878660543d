"""timm's VisionTransformer as a tuned model in its own right (the classifier inside: it trains
with every method) and inside ``mmpretrain.TIMMBackbone``: the official SSF count, SSF equal to
the official formula, exact merge into timm's own keys — loaded strictly by a fresh timm model in
a process that never imports mmssf — for the plain ViT and a DINOv2-style one (register tokens,
LayerScale), and the non-mergeable methods training and refused at merge. (The tiny timm ViT is
also a row of the method × backbone matrix: ``conftest.BACKBONES['timm_vit']``.)"""
import json
import os
import subprocess
import sys

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from conftest import randomize_peft
from mmssf.peft import MergeError, apply_peft, get_peft
from mmssf.peft.model_merge import merged_state_dict
from runner_utils import HANG_TIMEOUT

# name -> (timm VisionTransformer kwargs, input size): tiny, random init, classifier inside
MODELS = {
    'vit': (dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                 num_classes=5), 32),
    # DINOv2's layout: 4 register tokens, LayerScale, position embedding on patches only
    'dinov2': (dict(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=2,
                    mlp_ratio=2.0, num_classes=5, reg_tokens=4, init_values=1e-5,
                    no_embed_class=True), 28),
}
MERGEABLE = [dict(type='SSF'), dict(type='LoRA', targets=['qkv', 'proj', 'fc1', 'fc2'], r=4),
             dict(type='DoRA', r=4), dict(type='RLRR'), dict(type='SNELL', r=4),
             dict(type='BitFit'), dict(type='Linear'), dict(type='Full')]
REFUSED = [dict(type='VPTShallow', num_prompts=3), dict(type='VPTDeep', num_prompts=3),
           dict(type='Adapter', r=4), dict(type='Mona', r=8)]


def build(name, seed=0):
    torch.manual_seed(seed)
    kwargs, size = MODELS[name]
    model = VisionTransformer(**kwargs).eval()
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


@pytest.mark.parametrize('name', sorted(MODELS))
@pytest.mark.parametrize('cfg', MERGEABLE, ids=lambda c: c['type'])
def test_merge_gives_timm_keys_and_the_tuned_outputs(name, cfg):
    model, x = build(name)
    stock_keys = list(model.state_dict())
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


@pytest.mark.parametrize('cfg', REFUSED, ids=lambda c: c['type'])
def test_non_mergeable_methods_train_on_dinov2_layout_and_are_refused(cfg):
    model, x = build('dinov2')
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
import json, sys, torch
from timm.models.vision_transformer import VisionTransformer
kwargs, sd, x = json.loads(sys.argv[1]), torch.load(sys.argv[2], weights_only=True), torch.load(sys.argv[3])
model = VisionTransformer(**kwargs).eval()
model.load_state_dict(sd, strict=True)
assert not any(m.startswith('mmssf') for m in sys.modules)
with torch.no_grad():
    torch.save(model(x), sys.argv[4])
'''


def test_a_process_without_mmssf_loads_the_merged_weights_strictly(tmp_path):
    model, x = build('dinov2')
    apply_peft(model, dict(type='SSF'))
    randomize_peft(model)
    with torch.no_grad():
        expected = model(x)
    torch.save(merged_state_dict(model), tmp_path / 'merged.pth')
    torch.save(x, tmp_path / 'x.pth')
    result = subprocess.run(
        [sys.executable, '-c', SCRIPT, json.dumps(MODELS['dinov2'][0]), str(tmp_path / 'merged.pth'),
         str(tmp_path / 'x.pth'), str(tmp_path / 'out.pth')], capture_output=True, text=True,
        timeout=HANG_TIMEOUT, env=dict(os.environ, PYTHONPATH=''))
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
