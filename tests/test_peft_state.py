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
    save_peft(base, tmp_path / 'peft.pth')

    rebuilt, _ = build_backbone(backbone_name, seed=99)
    apply_peft(rebuilt, cfg)
    load_base_weights(rebuilt, base_weights)
    load_peft(rebuilt, tmp_path / 'peft.pth')
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
    elif method.startswith('SPT') or method == 'SNELL':  # + the class token, as the official code
        assert new_names <= trainable and trainable - new_names <= {'cls_token'}
    else:
        assert trainable == new_names  # exactly the added PEFT parameters, stock names untouched
    assert stock_names <= set(model.state_dict())


def test_ssf_vit_b_file_is_small(tmp_path):
    from mmpretrain.models.backbones import VisionTransformer
    model = VisionTransformer(arch='b', img_size=224, patch_size=16)
    apply_peft(model, dict(type='SSF'))
    save_peft(model, tmp_path / 'ssf.pth')
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
    save_peft(model, tmp_path / 'ssf.pth')
    other, _ = build_backbone('mmseg_vit')
    apply_peft(other, dict(type='LoRA'))
    with pytest.raises(ValueError, match='holds SSF parameters'):
        load_peft(other, tmp_path / 'ssf.pth')


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


def test_save_and_load_take_the_backbone_first(tmp_path):
    """``save_peft(backbone, path)`` as ``apply_peft(backbone, cfg)``; the old ``(path,
    backbone)`` order still works with a DeprecationWarning; anything else is a TypeError."""
    model, size = build_backbone('mmpretrain_vit')
    apply_peft(model, dict(type='SSF'))
    randomize_peft(model)
    save_peft(model, str(tmp_path / 'new.pth'))
    with pytest.warns(DeprecationWarning, match=r'save_peft\(path, backbone\) is deprecated: '
                                                r'call save_peft\(backbone, path\)'):
        save_peft(tmp_path / 'old.pth', model)
    new = torch.load(tmp_path / 'new.pth', weights_only=True)['state_dict']
    old = torch.load(tmp_path / 'old.pth', weights_only=True)['state_dict']
    assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)

    fresh, _ = build_backbone('mmpretrain_vit')
    apply_peft(fresh, dict(type='SSF'))
    with pytest.warns(DeprecationWarning, match=r'load_peft\(path, backbone\) is deprecated'):
        load_peft(tmp_path / 'old.pth', fresh)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in new.items())

    with pytest.raises(TypeError, match=r"save_peft\(backbone, path\): backbone must be a "
                                        r"torch.nn.Module .* got builtins.str 'a.pth' and "
                                        r"builtins.str 'b.pth'"):
        save_peft('a.pth', 'b.pth')
    with pytest.raises(TypeError, match=r'load_peft\(backbone, path\).*got .*Linear'):
        load_peft(model, torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match='extra_meta must be a dict'):
        save_peft(model, tmp_path / 'x.pth', extra_meta=['epoch'])
    assert not (tmp_path / 'x.pth').exists()
    untuned, _ = build_backbone('mmpretrain_vit')
    with pytest.raises(ValueError, match='not tuned: apply a PEFT method first'):
        save_peft(untuned, tmp_path / 'x.pth')


def test_print_trainable_parameters(capsys):
    from mmssf.peft import count_trainable, print_trainable_parameters
    model, _ = build_backbone('mmpretrain_vit')
    total = sum(p.numel() for p in model.parameters())
    apply_peft(model, dict(type='SSF'))
    added = sum(p.numel() for n, p in model.named_parameters() if 'ssf_' in n)
    assert added and count_trainable(model) == (added, total + added)
    line = print_trainable_parameters(model)
    assert capsys.readouterr().out == line + '\n'
    assert line == (f'trainable params: {added:,} || all params: {total + added:,} || '
                    f'trainable%: {100 * added / (total + added):.4f}')
    with pytest.raises(TypeError, match='expected a torch.nn.Module'):
        print_trainable_parameters({'weight': torch.zeros(2)})
