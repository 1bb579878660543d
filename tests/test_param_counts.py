"""Trainable parameter counts on full-size models against the papers' tables (METHODS.md)."""
import pytest
import torch
from torch import nn

from mmssf.peft import apply_peft

HEAD = {'vit_b': 768 * 100 + 100, 'swin_b': 1024 * 100 + 100}


@pytest.fixture(scope='module')
def full_models():
    from mmpretrain.models.backbones import SwinTransformer, VisionTransformer
    torch.manual_seed(0)
    return {'vit_b': lambda: VisionTransformer(arch='b', img_size=224, patch_size=16),
            'swin_b': lambda: SwinTransformer(arch='base', img_size=224)}


def trainable_with_head(backbone, arch):
    head = nn.Linear(768 if arch == 'vit_b' else 1024, 100)
    return sum(p.numel() for p in backbone.parameters() if p.requires_grad) + \
        sum(p.numel() for p in head.parameters())


@pytest.mark.parametrize('arch,cfg,expected', [
    ('vit_b', dict(type='Linear'), 76_900),
    ('vit_b', dict(type='BitFit'), 179_812),
    ('vit_b', dict(type='SSF'), 282_724),
    ('vit_b', dict(type='VPTShallow', num_prompts=200), 230_500),
    ('vit_b', dict(type='VPTDeep', num_prompts=50), 537_700),
    ('swin_b', dict(type='Linear'), 102_500),
    ('swin_b', dict(type='SSF'), 369_764),
    ('swin_b', dict(type='SSF', patch_merging=True), 376_932),
    # VPT on Swin: shallow p x 128, deep p x (width of each block) summed over the 24 blocks
    ('swin_b', dict(type='VPTShallow', num_prompts=200), 128_100),
    ('swin_b', dict(type='VPTDeep', num_prompts=50), 704_100),
])
def test_published_counts(full_models, arch, cfg, expected):
    backbone = full_models[arch]()
    apply_peft(backbone, cfg)
    assert trainable_with_head(backbone, arch) == expected


def _vit_b_dims():
    d, layers = 768, 12
    return d, layers, 4 * d


def test_lora_adapter_rlrr_counts_by_formula(full_models):
    d, layers, hidden = _vit_b_dims()
    r = 8
    lora = full_models['vit_b']()
    apply_peft(lora, dict(type='LoRA', r=r, targets=['qkv', 'fc1']))
    assert trainable_with_head(lora, 'vit_b') - HEAD['vit_b'] == \
        layers * (r * (d + 3 * d) + r * (d + hidden))

    adapter = full_models['vit_b']()
    apply_peft(adapter, dict(type='Adapter', r=r))
    assert trainable_with_head(adapter, 'vit_b') - HEAD['vit_b'] == layers * (2 * d * r + r + d)

    rlrr = full_models['vit_b']()
    apply_peft(rlrr, dict(type='RLRR'))

    def linear(fan_in, fan_out):  # s_left, s_right, f
        return fan_out + fan_in + fan_out
    per_block = linear(d, 3 * d) + linear(d, d) + linear(d, hidden) + linear(hidden, d) + 2 * (2 * d)
    assert trainable_with_head(rlrr, 'vit_b') - HEAD['vit_b'] == \
        layers * per_block + 2 * d + 2 * d  # + SSF after patch embed and the final norm
