"""The method contract: every registered method is covered by the matrix; options are typed and
validated at build time; per-method facts (tensor prefixes, no-decay tensors, mergeability) come
from the classes."""
import pytest
import torch

import test_param_counts
from conftest import build_backbone
from method_matrix import AMP_CASES, MERGE_CASES, REFUSE_CASES, ROUND_TRIP_CASES
from mmssf.peft import OptionError, apply_peft, build_peft, get_peft
from mmssf.peft.registry_facts import method_classes, methods_of_tensor


def test_every_registered_method_is_in_the_matrix():
    """Registering a method without merge (or refusal), round-trip, AMP and count coverage
    fails."""
    missing = []
    for cls in method_classes():
        name = cls.__name__
        merge_table = MERGE_CASES if cls.mergeable else REFUSE_CASES
        for table, label in ((merge_table, 'merge' if cls.mergeable else 'merge refusal'),
                             (ROUND_TRIP_CASES, 'PEFT-only round trip'),
                             (AMP_CASES, 'AMP training'),
                             (test_param_counts.COUNTED, 'parameter count')):
            if name not in table:
                missing.append(f'{name}: no {label} case')
    assert not missing, missing


def test_matrix_names_only_registered_methods():
    names = {cls.__name__ for cls in method_classes()}
    for table in (MERGE_CASES, REFUSE_CASES, ROUND_TRIP_CASES, AMP_CASES,
                  test_param_counts.COUNTED):
        assert set(table) <= names, set(table) - names


# -- options: typed, validated when the method is built ---------------------------------------
@pytest.mark.parametrize('cfg,match', [
    (dict(type='LoRA', rank=16),
     r"unknown option 'rank' \(did you mean 'r'\?\).*alpha, drop_path, dropout, r, row_block"),
    (dict(type='SSF', init_std='x'), r"init_std='x' has the wrong type.*float"),
    (dict(type='LoRA', r=-1), r'r=-1 is out of range.*>= 1'),
    (dict(type='LoRA', r=0), r'r=0 is out of range'),
    (dict(type='LoRA', r=2.5), r'r=2.5 has the wrong type.*int'),
    (dict(type='BitFit', targets=['qkv']), r"BitFit: unknown option 'targets'. Valid options: none"),
    (dict(type='Adapter', act='tanh'), r"act='tanh' is not one of 'gelu', 'relu'"),
    (dict(type='RLRR', init='kaiming'), r"init='kaiming' is not one of 'residual', 'official'"),
    (dict(type='LoRA', targets={'qkv': dict(rr=4)}), r"LoRA target 'qkv': unknown option 'rr'"),
    (dict(type='VPTDeep', num_prompts=0), r'num_prompts=0 is out of range'),
    (dict(type='SSF', shift='yes'), r"shift='yes' has the wrong type.*bool"),
])
def test_bad_options_fail_at_build_time_naming_the_option(cfg, match):
    with pytest.raises(OptionError, match=match):
        build_peft(cfg)


def test_unknown_method_lists_registered_ones():
    with pytest.raises(KeyError, match='unknown PEFT method .*registered: .*LoRA.*SSF'):
        build_peft(dict(type='LoRa'))


def test_lora_dropout_where_no_hook_sees_the_input_is_an_error():
    model, _ = build_backbone('mmseg_vit')  # qkv = nn.MultiheadAttention's fused in-projection
    with pytest.raises(OptionError, match=r"attn\.attn: dropout=0.1 cannot apply.*'qkv': dict\(dropout=0.0\)"):
        apply_peft(model, dict(type='LoRA', dropout=0.1))
    fresh, _ = build_backbone('mmpretrain_vit')
    apply_peft(fresh, dict(type='LoRA', dropout=0.1))  # a hooked Linear takes it


def test_options_reach_the_units():
    model, _ = build_backbone('mmpretrain_vit')
    method = apply_peft(model, dict(type='LoRA', r=3, alpha=6.0))
    assert all(u.r == 3 and u.scaling == 2.0 for u in method.units)
    assert model.layers[0].attn.qkv.lora_A.shape[0] == 3


def test_ssf_shift_after_bias_free_module_is_known_at_build_time():
    model, _ = build_backbone('mmpretrain_swin')
    method = apply_peft(model, dict(type='SSF', targets=['merge_reduction']))
    assert method.mergeable and any('no bias' in b for b in method.merge_blockers())
    ok, _ = build_backbone('mmpretrain_swin')
    fine = apply_peft(ok, dict(type='SSF', targets={'merge_reduction': dict(shift=False)}))
    assert not fine.merge_blockers()


# -- facts from the classes -------------------------------------------------------------------
def test_no_decay_set_comes_from_the_classes():
    from mmssf.engine.optim_constructor import no_weight_decay
    model, _ = build_backbone('mmpretrain_swin')
    apply_peft(model, dict(type='RLRR'))
    names = no_weight_decay(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == trainable  # RLRR factors and SSF scales / shifts: all decay-free
    lora, _ = build_backbone('mmpretrain_swin')
    apply_peft(lora, dict(type='LoRA'))
    assert no_weight_decay(lora) == set()  # LoRA's A / B are decayed like weights


def test_tensor_names_are_attributed_to_their_methods():
    assert methods_of_tensor('backbone.layers.0.attn.qkv.lora_A').split('/') == ['LoRA', 'SPTLoRA']
    assert 'SSF' in methods_of_tensor('x.ssf_scale') and 'RLRR' in methods_of_tensor('x.ssf_scale')
    assert methods_of_tensor('x.rlrr_left') == 'RLRR'
    assert methods_of_tensor('x.weight') is None


def test_every_tensor_a_method_adds_has_a_declared_prefix(tmp_path, backbone_name):
    for table in (MERGE_CASES, REFUSE_CASES):
        for name, cases in table.items():
            model, _ = build_backbone(backbone_name)
            stock = set(model.state_dict())
            method = apply_peft(model, cases[0](model, tmp_path))
            added = set(model.state_dict()) - stock
            prefixes = type(method).tensor_prefixes()
            assert all(k.rsplit('.', 1)[-1].startswith(prefixes) for k in added), (name, added)
