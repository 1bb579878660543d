"""PEFT-only state dict round trip, freezing at construction, bad targets."""
import pytest
import torch

from conftest import build_backbone, flatten_outputs, randomize_peft
from method_matrix import ROUND_TRIP_CASES
from mmssf.peft import (apply_peft, get_peft, load_base_weights, load_peft, save_peft,
                        supported_backbones)


@pytest.mark.parametrize('method', sorted(ROUND_TRIP_CASES))
def test_peft_state_round_trip(tmp_path, method, backbone_name):
    base, size = build_backbone(backbone_name)
    base_weights = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = ROUND_TRIP_CASES[method][0](base, tmp_path)
    apply_peft(base, cfg)
    randomize_peft(base)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected = flatten_outputs(base(x))
    save_peft(tmp_path / 'peft.pth', base)

    rebuilt, _ = build_backbone(backbone_name, seed=99)
    apply_peft(rebuilt, cfg)
    load_base_weights(rebuilt, base_weights)
    load_peft(tmp_path / 'peft.pth', rebuilt)
    with torch.no_grad():
        for a, b in zip(expected, flatten_outputs(rebuilt(x))):
            assert torch.equal(a, b)

    saved = torch.load(tmp_path / 'peft.pth', weights_only=True)['state_dict']
    trainable = {n for n, p in rebuilt.named_parameters() if p.requires_grad}
    assert set(saved) == trainable | set(get_peft(rebuilt).buffer_names())  # only PEFT tensors


@pytest.mark.parametrize('method', sorted(ROUND_TRIP_CASES))
def test_frozen_at_construction(tmp_path, method, backbone_name):
    model, _ = build_backbone(backbone_name)
    stock_names = set(model.state_dict())
    apply_peft(model, ROUND_TRIP_CASES[method][0](model, tmp_path))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    new_names = {n for n, _ in model.named_parameters()} - stock_names
    if method == 'BitFit':
        assert trainable and all(n.rsplit('.', 1)[-1] in ('bias', 'in_proj_bias') for n in trainable)
    elif method == 'FullFineTune':
        assert trainable == {n for n, _ in model.named_parameters()}
    elif method.startswith('SPT'):  # + the class token, trained and counted as the official SPT
        assert new_names <= trainable and trainable - new_names <= {'cls_token'}
    else:
        assert trainable == new_names  # exactly the added PEFT parameters, stock names untouched
    assert stock_names <= set(model.state_dict())


def test_ssf_vit_b_file_is_small(tmp_path):
    from mmpretrain.models.backbones import VisionTransformer
    model = VisionTransformer(arch='b', img_size=224, patch_size=16)
    apply_peft(model, dict(type='SSF'))
    save_peft(tmp_path / 'ssf.pth', model)
    assert (tmp_path / 'ssf.pth').stat().st_size < 1.5e6


def test_pattern_matching_nothing_lists_modules():
    model, _ = build_backbone('mmpretrain_vit')
    with pytest.raises(ValueError, match=r'matches no module.*layers\.0\.attn\.qkv'):
        apply_peft(model, dict(type='LoRA', targets=['attn.nonexistent']))


def test_regex_and_suffix_targets_with_per_target_options():
    model, _ = build_backbone('mmpretrain_vit')
    method = apply_peft(model, dict(type='LoRA', r=2, targets={
        r'layers\.0\.attn\.qkv': dict(r=4), 'ffn.layers.1': None}))
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if 'lora_A' in n}
    assert shapes == {'layers.0.attn.qkv.lora_A': (4, 32), 'layers.0.ffn.layers.1.lora_A': (2, 64),
                      'layers.1.ffn.layers.1.lora_A': (2, 64)}
    assert len(method.units) == 3


def test_unknown_backbone_names_supported_ones():
    with pytest.raises(TypeError, match='supported implementations: ' + supported_backbones()[0]):
        apply_peft(torch.nn.Sequential(torch.nn.Linear(2, 2)), dict(type='SSF'))


def test_peft_file_for_other_method_is_refused(tmp_path):
    model, _ = build_backbone('mmseg_vit')
    apply_peft(model, dict(type='SSF'))
    save_peft(tmp_path / 'ssf.pth', model)
    other, _ = build_backbone('mmseg_vit')
    apply_peft(other, dict(type='LoRA'))
    with pytest.raises(ValueError, match='holds SSF parameters'):
        load_peft(tmp_path / 'ssf.pth', other)


def test_base_weights_that_do_not_fit_name_keys():
    model, _ = build_backbone('mmdet_swin')
    apply_peft(model, dict(type='SSF'))
    weights = {k: v for k, v in model.state_dict().items() if 'ssf_' not in k}
    weights['extra.weight'] = torch.zeros(1)
    weights.pop('patch_embed.projection.weight')
    with pytest.raises(KeyError, match=r'missing \[patch_embed\.projection\.weight\].*extra\.weight'):
        load_base_weights(model, weights)


def test_applying_twice_is_refused():
    model, _ = build_backbone('mmseg_swin')
    apply_peft(model, dict(type='SSF'))
    with pytest.raises(ValueError, match='already tuned with SSF'):
        apply_peft(model, dict(type='LoRA'))
    assert get_peft(model) is not None
