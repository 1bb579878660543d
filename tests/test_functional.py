"""The memory-lean SSF op: exact gradients (double-precision gradcheck) and what it saves."""
import pytest
import torch

from mmssf.peft.functional import scale_shift


@pytest.mark.parametrize('shape,dim', [((3, 5, 4), -1), ((2, 4, 3, 3), 1)])
@pytest.mark.parametrize('with_shift', [True, False])
@pytest.mark.parametrize('zero_scales', [False, True])  # True: the op keeps its input instead
def test_gradients_are_exact(shape, dim, with_shift, zero_scales):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.double, requires_grad=True)
    scale = 1 + 0.1 * torch.randn(shape[dim], dtype=torch.double)
    if zero_scales:
        scale[:2] = 0.0
    scale.requires_grad_()
    shift = (0.1 * torch.randn(shape[dim], dtype=torch.double)).requires_grad_() if with_shift else None
    args = (x, scale, shift) if with_shift else (x, scale)
    assert torch.autograd.gradcheck(
        lambda *a: scale_shift(a[0], a[1], a[2] if with_shift else None, dim), args)


def test_saves_only_its_output():
    x = torch.randn(4, 8, requires_grad=True)
    scale, shift = torch.ones(8, requires_grad=True), torch.zeros(8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = scale_shift(x * 2, scale, shift)
    big = [t for t in saved if t.numel() == y.numel()]
    # the op's input (x * 2; the scalar mul keeps nothing) is not kept: only y itself
    assert len(big) == 1 and big[0].untyped_storage().data_ptr() == y.untyped_storage().data_ptr()


# -- rebuilt_linear ------------------------------------------------------------------------------
def rescaled(weight, bias, tensors, memo=None):
    """RLRR's rebuild, written here: ``W + (l rᵀ) ⊙ W``, ``b + f``."""
    left, right, *shift = tensors
    w = weight + (left[:, None] * right[None]) * weight
    return w, (bias + shift[0] if shift else bias), ()


def kernelized(weight, bias, tensors, memo=None):
    """A SNELL-like rebuild (P = 2 distance kernel) that hands a memo from forward to backward."""
    a, b = tensors
    delta = 0.1 * (torch.cdist(b[0], a[0]) - torch.cdist(b[1], a[1]))
    scale = memo[0] if memo else delta.detach().abs().mean().new_ones(())  # (constant: 1)
    return weight + scale * delta, bias, (scale, )


@pytest.mark.parametrize('with_bias', [True, False])
@pytest.mark.parametrize('train_weight', [False, True])
def test_rebuilt_linear_gradients_are_exact(with_bias, train_weight):
    from mmssf.peft.functional import rebuilt_linear
    torch.manual_seed(0)
    d = torch.double
    x = torch.randn(2, 3, 5, dtype=d, requires_grad=True)
    weight = torch.randn(4, 5, dtype=d, requires_grad=train_weight)
    bias = torch.randn(4, dtype=d, requires_grad=train_weight) if with_bias else None
    left = torch.randn(4, dtype=d, requires_grad=True)
    right = torch.randn(5, dtype=d, requires_grad=True)
    shift = (torch.randn(4, dtype=d, requires_grad=True), ) if with_bias else ()
    assert torch.autograd.gradcheck(
        lambda x, w, l, r, *f: rebuilt_linear(x, w, bias, rescaled, l, r, *f),
        (x, weight, left, right, *shift))
    a = torch.randn(2, 5, 2, dtype=d, requires_grad=True)
    b = torch.randn(2, 4, 2, dtype=d, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, a, b: rebuilt_linear(x, weight, bias, kernelized, a, b), (x, a, b))


def test_rebuilt_linear_keeps_x_not_the_rebuilt_weight_and_reuses_the_memo():
    from mmssf.peft.functional import rebuilt_linear
    weight, bias = torch.randn(32, 16), torch.randn(32)
    x = torch.randn(3, 16, requires_grad=True)
    left, right = torch.randn(32, requires_grad=True), torch.randn(16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = rebuilt_linear(x, weight, bias, rescaled, left, right)
    own = {weight.data_ptr(), bias.data_ptr()}
    dense = [t for t in saved if t.numel() >= weight.numel() and t.data_ptr() not in own]
    assert not dense, [tuple(t.shape) for t in dense]
    assert any(t is x for t in saved)
    memos = []

    def recording(weight, bias, tensors, memo):
        memos.append(memo)
        w, b, _ = rescaled(weight, bias, tensors)
        return w, b, (torch.tensor(7.0), )
    out = rebuilt_linear(x, weight, bias, recording, left, right)
    torch.testing.assert_close(out, y)
    out.sum().backward()
    assert memos[0] is None and len(memos) == 2 and float(memos[1][0]) == 7.0
