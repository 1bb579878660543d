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
