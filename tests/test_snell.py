"""SNELL against a reference written here from the paper (Shen et al., NeurIPS 2024, Sec. 3 and
App. B) and the official code: the piecewise-linear kernel with P = 2 and fixed α = (0.1, −0.1),
the competition-based sparsification per matrix, separate q / k / v updates on a fused qkv, the
gradient (threshold and gate constant in backward), and what is kept for backward."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import build_backbone
from mmssf.peft import OptionError, apply_peft, get_peft
from mmssf.peft.snell import interpolated_quantile


def reference_delta(a, b, scale=0.1, sparsity=0.9, mode='official'):
    """ΔWˢ (out × in) from factors ``a`` (P, in, r/P) and ``b`` (P, out, r/P):
    ``ΔW[o, i] = Σ_p α_p ‖b[p, o] − a[p, i]‖₂`` with α_p = scale · (−1)^p, then sparsified."""
    alpha = torch.tensor([scale * (-1) ** p for p in range(a.shape[0])], dtype=a.dtype)
    dist = ((b[:, :, None, :] - a[:, None, :, :]) ** 2).sum(-1).sqrt()  # (P, out, in)
    delta = (alpha[:, None, None] * dist).sum(0)
    if sparsity == 0:
        return delta
    mag = delta.detach().abs()
    if mode == 'official':  # torch.quantile + F.threshold, as the official code
        threshold = torch.quantile(mag.flatten(), sparsity)
        gate = torch.where(mag > threshold, mag, torch.zeros_like(mag))
    else:  # Eq. 5: the ⌈s·m·n⌉-th smallest magnitude, soft threshold
        k = math.ceil(sparsity * mag.numel())
        threshold = mag.flatten().sort().values[k - 1]
        gate = (mag - threshold).clamp(min=0)
    return delta * gate


def reference_blocks(unit, dtype=torch.float64):
    a = unit.module.snell_in.detach().to(dtype)
    b = unit.module.snell_out.detach().to(dtype)
    return torch.cat([reference_delta(a[k], b[k], unit.scale, unit.sparsity, unit.mode)
                      for k in range(a.shape[0])])


@pytest.mark.parametrize('cfg', [dict(), dict(sparsify='paper', sparsity=0.7), dict(sparsity=0.0)],
                         ids=['official', 'paper', 'klora'])
def test_delta_matches_the_reference(backbone_name, cfg):
    model, _ = build_backbone(backbone_name)
    method = apply_peft(model, dict(type='SNELL', r=4, **cfg))
    for unit in method.units:
        ours = unit.delta().detach().double()
        ref = reference_blocks(unit)
        assert ours.shape == ref.shape == (unit.fan_out, unit.fan_in)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6 * ref.abs().max().item())


def test_official_positions_and_separate_qkv_blocks():
    model, _ = build_backbone('mmpretrain_vit')
    method = apply_peft(model, dict(type='SNELL'))
    assert {u.role for u in method.units} == {'qkv', 'proj', 'fc1', 'fc2'}
    qkv = model.layers[0].attn.qkv
    dim = qkv.in_features
    assert qkv.snell_in.shape == (3, 2, dim, 4) and qkv.snell_out.shape == (3, 2, dim, 4)
    fc1 = model.layers[0].ffn.layers[0][0]
    assert fc1.snell_in.shape == (1, 2, fc1.in_features, 4)
    assert fc1.snell_out.shape == (1, 2, fc1.out_features, 4)


@pytest.mark.parametrize('mode,sparsity', [('official', 0.9), ('official', 0.35), ('paper', 0.9)])
def test_each_block_keeps_its_own_share_of_entries(mode, sparsity):
    """Per q / k / v block (n = C² entries): official keeps n − ⌊s(n−1)⌋ − 1 (strictly above the
    interpolated quantile), the paper's rule n − ⌈s·n⌉."""
    model, _ = build_backbone('mmpretrain_vit')
    method = apply_peft(model, dict(type='SNELL', sparsity=sparsity, sparsify=mode))
    unit = next(u for u in method.units if u.role == 'qkv')
    blocks = unit.delta().detach().view(3, -1)
    n = blocks.shape[1]
    if mode == 'official':
        kept = n - math.floor(sparsity * (n - 1)) - 1
    else:
        kept = n - math.ceil(sparsity * n)
    assert [int((b != 0).sum()) for b in blocks] == [kept] * 3


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('shape', [(1, 2), (3, 7), (3, 1001), (1, 4096), (3, 12289)])
@pytest.mark.parametrize('kind', ['uniform', 'ties', 'magnitudes'])
def test_interpolated_quantile_is_torch_quantile_bit_for_bit(dtype, shape, kind):
    """The official threshold is ``torch.quantile`` of each block's ``|ΔW|``: the selection gives
    the very same float (``torch.equal``), for ranks on and between order statistics."""
    gen = torch.Generator().manual_seed(shape[1])
    values = torch.rand(shape, generator=gen, dtype=dtype)
    if kind == 'ties':
        values = (values * 8).floor()
    elif kind == 'magnitudes':
        values = torch.randn(shape, generator=gen, dtype=dtype).abs() * 1e-3
    for q in (0.0, 0.1, 0.35, 0.5, 0.7, 0.9, 0.95, 0.995, 0.9999, 1.0, 0.123456789):
        ours = interpolated_quantile(values, q)
        assert ours.shape == (shape[0], 1) and ours.dtype == dtype
        reference = torch.stack([torch.quantile(row, q) for row in values])
        assert torch.equal(ours[:, 0], reference), (q, ours[:, 0], reference)


@pytest.mark.parametrize('backbone_name', ['mmpretrain_vit', 'mmseg_vit'])
@pytest.mark.parametrize('mode', ['official', 'paper'])
def test_gradients_match_autograd_of_the_reference(backbone_name, mode):
    """Input and factor gradients through the hooked Linears (and mmseg's re-parameterized
    in-projection) equal autograd through ``x (W + ΔWˢ)ᵀ`` with the reference ΔWˢ (float64)."""
    model, size = build_backbone(backbone_name)
    method = apply_peft(model, dict(type='SNELL', r=4, sparsity=0.5, sparsify=mode))
    model.double()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    out = sum((o ** 2).sum() for o in model(x))
    out.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    # the same model, each SNELL unit replaced by a weight transform with the reference delta
    model.zero_grad()
    for unit in method.units:
        for handle in unit.handles:
            handle.remove()
        unit.handles = []

        def transform(module, params, unit=unit):
            a, b = module.snell_in, module.snell_out
            delta = torch.cat([reference_delta(a[k], b[k], unit.scale, unit.sparsity, unit.mode)
                               for k in range(a.shape[0])])
            name = 'in_proj_weight' if 'in_proj_weight' in params else 'weight'
            return {name: params[name] + delta}
        name = 'in_proj_weight' if hasattr(unit.module, 'in_proj_weight') else 'weight'
        unit.add_weight_transform('snell_ref', (name, ), transform)
    out_ref = sum((o ** 2).sum() for o in model(x))
    out_ref.backward()
    torch.testing.assert_close(out, out_ref)
    for name, grad in ours.items():
        torch.testing.assert_close(grad, dict(model.named_parameters())[name].grad, msg=name)


def test_a_hooked_linear_keeps_no_dense_update_for_backward():
    """The memory claim: between forward and backward a SNELL'd Linear keeps ``x`` and the factors,
    never an out × in tensor (ΔW, its gate or the effective weight)."""
    model, _ = build_backbone('mmpretrain_vit')
    apply_peft(model, dict(type='SNELL', targets=['fc1']))
    fc1 = model.layers[0].ffn.layers[0][0]
    fc1.train()
    x = torch.randn(2, 17, fc1.in_features, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fc1(x)
    dense = fc1.in_features * fc1.out_features
    own = {p.data_ptr() for p in fc1.parameters()}  # the stock Linear keeps its own weight
    extra = [t for t in saved if t.data_ptr() not in own]
    assert not any(t.numel() >= dense for t in extra), [tuple(t.shape) for t in extra]
    assert any(t is x for t in saved)
    y.sum().backward()
    assert fc1.snell_in.grad is not None and fc1.snell_in.grad.abs().sum() > 0


def test_training_regularisation_only_in_training():
    model, _ = build_backbone('mmpretrain_vit')
    apply_peft(model, dict(type='SNELL', dropout=0.5, drop_path=0.5, targets=['fc1']))
    fc1 = model.layers[0].ffn.layers[0][0]
    x = torch.randn(8, 5, fc1.in_features)
    fc1.eval()
    with torch.no_grad():
        plain = F.linear(x, fc1.weight + get_peft(model).units[0].delta(), fc1.bias)
        torch.testing.assert_close(fc1(x), plain)
        fc1.train()
        assert not torch.allclose(fc1(x), plain)


@pytest.mark.parametrize('cfg,match', [
    (dict(type='SNELL', r=3), r'r=3 must be a multiple of 2'),
    (dict(type='SNELL', sparsity=1.0), r'sparsity=1.0 is out of range'),
    (dict(type='SNELL', sparsify='soft'), r"sparsify='soft' is not one of 'official', 'paper'"),
    (dict(type='SNELL', rank=8), r"unknown option 'rank'"),
])
def test_bad_options_are_named(cfg, match):
    model, _ = build_backbone('mmpretrain_vit')
    with pytest.raises(OptionError, match=match):
        apply_peft(model, cfg)


def test_regularisation_where_no_hook_sees_the_linear_is_an_error():
    model, _ = build_backbone('mmseg_vit')  # qkv: nn.MultiheadAttention's fused in-projection
    with pytest.raises(OptionError, match=r'layers.0.attn.attn: dropout=0.1 cannot apply here'):
        apply_peft(model, dict(type='SNELL', dropout=0.1))
    fresh, _ = build_backbone('mmseg_vit')
    apply_peft(fresh, dict(type='SNELL', targets={'qkv': None, 'proj': None,
                                                  'fc1': dict(dropout=0.1, drop_path=0.1)}))


def test_trains_under_autocast():
    """bf16 autocast on CPU: the update follows the stock Linear's output dtype; the factors get
    float32 gradients."""
    model, size = build_backbone('mmpretrain_vit')
    apply_peft(model, dict(type='SNELL', r=4))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = sum(o.float().square().mean() for o in model(torch.randn(2, 3, *size)))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all()
                         and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize('backbone_name', ['mmpretrain_vit', 'timm_vit', 'mmseg_vit', 'mmpretrain_swin'])
def test_trains_what_the_official_trains(backbone_name):
    """Official VisionTransformerSNELL.freeze_stages: the updates, the class token and the head
    (outside the backbone here, except timm's); norms, position / patch embedding frozen. The class
    token gets no weight decay; ``cls_token=False`` freezes it; Swin has none."""
    model, _ = build_backbone(backbone_name)
    method = apply_peft(model, dict(type='SNELL', r=2))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    factors = {n for n in trainable if '.snell_' in n}
    head = {n for n in trainable if n.startswith('head.')}
    vit = backbone_name.endswith('vit')
    assert trainable - factors - head == ({'cls_token'} if vit else set())
    assert ('cls_token' in method.no_weight_decay()) == vit
    assert ('cls_token' in method.peft_state_dict(model)) == vit
    frozen, _ = build_backbone(backbone_name)
    apply_peft(frozen, dict(type='SNELL', r=2, cls_token=False))
    assert {n for n, p in frozen.named_parameters() if p.requires_grad} == factors | head
    with pytest.raises(OptionError, match='cls_token'):
        apply_peft(build_backbone(backbone_name)[0], dict(type='SNELL', cls_token='yes'))


def test_the_kernel_op_has_exact_gradients():
    """``kernel_delta``'s written-out backward: double-precision gradcheck, the gradient of the
    reference (autograd through the distances) and none from a zero distance (as ``cdist``)."""
    from mmssf.peft.snell import kernel_delta
    torch.manual_seed(0)
    d = torch.double
    a = torch.randn(3, 2, 6, 2, dtype=d, requires_grad=True)
    b = torch.randn(3, 2, 5, 2, dtype=d, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: kernel_delta(a, b, 0.1), (a, b))
    g = torch.randn(3, 5, 6, dtype=d)
    ours = torch.autograd.grad(kernel_delta(a, b, 0.1), (a, b), g)
    ref = [reference_delta(a[k], b[k], 0.1, sparsity=0) for k in range(3)]
    theirs = torch.autograd.grad(torch.stack(ref), (a, b), g)
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y)
    with torch.no_grad():
        b[0, 0, 0] = a[0, 0, 0]  # d = 0 for (o, i) = (0, 0) in piece 0
    grads = torch.autograd.grad(kernel_delta(a, b, 0.1), (a, b), g)
    assert all(torch.isfinite(t).all() for t in grads)
