"""RLRR against the official formulas (Dong et al., CVPR 2024; zstarN70/RLRR), written here."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import build_backbone, flatten_outputs, randomize_peft
from mmssf.peft import MergeError, apply_peft, get_peft


def official_rlrr_linear(x, weight, bias, scale_line, scale_col, shift):
    """The official RLRRLinear: ``(W * scale_col * scale_line) + W``, ``b + shift``."""
    w = weight * scale_col.view(1, -1) * scale_line.view(-1, 1) + weight
    return F.linear(x, w, bias + shift)


def test_three_column_scales_on_a_fused_qkv_equal_three_separate_linears():
    model, _ = build_backbone('mmpretrain_vit')
    apply_peft(model, dict(type='RLRR'))
    randomize_peft(model, std=0.3)
    qkv = model.layers[0].attn.qkv
    dim = qkv.in_features
    assert qkv.rlrr_right.shape == (3, dim) and qkv.rlrr_left.shape == (3 * dim, )
    x = torch.randn(2, 5, dim)
    with torch.no_grad():
        tuned = qkv(x)
        parts = []
        for i in range(3):  # q, k, v as the official separate Linears, each with its own RLRR
            rows = slice(i * dim, (i + 1) * dim)
            parts.append(official_rlrr_linear(x, qkv.weight[rows], qkv.bias[rows],
                                              qkv.rlrr_left[rows], qkv.rlrr_right[i],
                                              qkv.rlrr_bias[rows]))
        reference = torch.cat(parts, dim=-1)
    assert (tuned - reference).abs().max().item() <= 1e-5
    # the three column scales are independent: changing k's leaves q's and v's outputs alone
    with torch.no_grad():
        qkv.rlrr_right[1].add_(1.0)
        moved = qkv(x)
    assert torch.equal(moved[..., :dim], tuned[..., :dim])
    assert torch.equal(moved[..., 2 * dim:], tuned[..., 2 * dim:])
    assert not torch.allclose(moved[..., dim:2 * dim], tuned[..., dim:2 * dim])


def test_swin_keeps_one_column_scale_as_the_official_code():
    model, _ = build_backbone('mmpretrain_swin')
    apply_peft(model, dict(type='RLRR'))
    qkv = model.stages[0].blocks[0].attn.w_msa.qkv
    assert qkv.rlrr_right.shape == (qkv.in_features, )
    assert not hasattr(model.patch_embed.projection, 'ssf_scale')  # no SSF after patch embed


def test_fused_qkv_blocks_merge_exactly(backbone_name):
    model, size = build_backbone(backbone_name)
    apply_peft(model, dict(type='RLRR', qkv_blocks=3))
    randomize_peft(model, std=0.2)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        tuned = flatten_outputs(model(x))
        get_peft(model).merge(model)
        merged = flatten_outputs(model(x))
    assert max((a - b).abs().max().item() for a, b in zip(tuned, merged)) <= 1e-5


def test_inits():
    model, size = build_backbone('mmpretrain_vit')
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        stock = flatten_outputs(model(x))
    apply_peft(model, dict(type='RLRR', init='residual', init_std=0.0))
    with torch.no_grad():  # residual init (and SSF at identity): the pretrained function
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(stock, flatten_outputs(model(x))))

    official, _ = build_backbone('mmpretrain_vit')
    apply_peft(official, dict(type='RLRR', init='official'))
    fc1 = official.layers[0].ffn.layers[0][0]
    left_bound, right_bound = math.sqrt(6), math.sqrt(6 / fc1.in_features)
    assert fc1.rlrr_left.abs().max() <= left_bound and fc1.rlrr_left.abs().max() > left_bound / 2
    assert fc1.rlrr_right.abs().max() <= right_bound
    assert fc1.rlrr_right.abs().max() > right_bound / 2
    assert torch.count_nonzero(fc1.rlrr_bias) == 0


def test_patch_merging_reduction_trains_but_cannot_merge_unless_shift_is_off():
    model, size = build_backbone('mmpretrain_swin')
    method = apply_peft(model, dict(type='RLRR', patch_merging=True))
    red = model.stages[0].downsample.reduction
    assert red.bias is None and hasattr(red, 'rlrr_bias')
    randomize_peft(model)
    loss = sum(o.sum() for o in flatten_outputs(model(torch.randn(1, 3, *size))))
    loss.backward()
    assert red.rlrr_bias.grad is not None and red.rlrr_bias.grad.abs().sum() > 0
    assert any('reduction' in b and 'shift=False' in b for b in method.merge_blockers())
    with pytest.raises(MergeError, match='no bias to take the shift'):
        method.merge(model)

    ok, _ = build_backbone('mmpretrain_swin')
    fine = apply_peft(ok, dict(type='RLRR',
                               targets={'qkv': None, 'merge_reduction': dict(shift=False)}))
    assert not fine.merge_blockers()


def test_reparam_hook_refuses_an_unmergeable_placement_before_training():
    from mmssf.engine import ReparamCheckpointHook
    model, _ = build_backbone('mmpretrain_swin')
    apply_peft(model, dict(type='RLRR', patch_merging=True))
    with pytest.raises(ValueError, match='cannot merge.*reduction.*remove ReparamCheckpointHook'):
        ReparamCheckpointHook().before_run(SimpleNamespace(model=model))
    vpt, _ = build_backbone('mmpretrain_swin')
    apply_peft(vpt, dict(type='VPTDeep', num_prompts=2))
    ReparamCheckpointHook().before_run(SimpleNamespace(model=vpt))  # never-mergeable: no error


@pytest.mark.parametrize('backbone_name', ['mmpretrain_vit', 'mmpretrain_swin', 'mmseg_vit'])
def test_the_lean_linear_has_the_gradients_of_the_reparameterized_weight(backbone_name):
    """Plain Linears run RLRR as one op that rebuilds W' in backward; its input and parameter
    gradients equal autograd through the official ``F.linear(x, W + (l rᵀ) ⊙ W, b + f)``
    (float64), and the op keeps no ``out × in`` copy between forward and backward."""
    model, size = build_backbone(backbone_name)
    method = apply_peft(model, dict(type='RLRR'))
    randomize_peft(model, std=0.2)
    model.double()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    out = sum((o ** 2).sum() for o in flatten_outputs(model(x)))
    out.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    lean = 0
    for unit in method.units:
        if not hasattr(unit, 'rebuild') or 'forward' not in unit.module.__dict__:
            continue
        lean += 1
        for handle in unit.handles:
            handle.remove()
        unit.handles = []
        left, right = unit.module.rlrr_left, unit.module.rlrr_right.view(unit.blocks, -1)

        def official(module, params, left=left, right=right, blocks=unit.blocks):
            rows = left.shape[0] // blocks
            weight = torch.cat([
                params['weight'][i * rows:(i + 1) * rows] * right[i].view(1, -1)
                * left[i * rows:(i + 1) * rows].view(-1, 1) for i in range(blocks)]) \
                + params['weight']
            return dict(weight=weight, bias=params['bias'] + module.rlrr_bias)
        unit.add_weight_transform('rlrr_ref', ('weight', 'bias'), official)
    assert lean > 0
    out_ref = sum((o ** 2).sum() for o in flatten_outputs(model(x)))
    out_ref.backward()
    torch.testing.assert_close(out, out_ref)
    for name, grad in ours.items():
        torch.testing.assert_close(grad, dict(model.named_parameters())[name].grad, msg=name)


def test_a_lean_linear_keeps_no_dense_tensor_for_backward():
    model, _ = build_backbone('mmpretrain_vit')
    apply_peft(model, dict(type='RLRR', targets=['fc1']))
    randomize_peft(model)
    fc1 = model.layers[0].ffn.layers[0][0]
    x = torch.randn(2, 17, fc1.in_features, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = fc1(x)
    own = {p.data_ptr() for p in fc1.parameters()}
    dense = [t for t in saved if t.numel() >= fc1.weight.numel() and t.data_ptr() not in own]
    assert not dense, [tuple(t.shape) for t in dense]
    y.sum().backward()
    assert fc1.rlrr_left.grad.abs().sum() > 0 and fc1.rlrr_right.grad.abs().sum() > 0
