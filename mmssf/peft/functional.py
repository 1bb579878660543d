"""Autograd ops whose saved tensors are chosen for training memory."""
import torch


class _ScaleShift(torch.autograd.Function):
    """``y = x * scale + shift`` along one channel dim, saving only ``y`` for backward.

    A plain ``x * scale + shift`` saves its input ``x``; the op after SSF (attention, GELU, the
    next Linear) saves ``y``, so both would be kept. The scale gradient ``Σ g·x`` is computed from
    ``y`` as ``(Σ g·y - shift·Σ g) / scale``, so SSF adds no activation memory of its own and
    never rebuilds its input.
    """

    @staticmethod
    def forward(ctx, x, scale, shift, dim):
        shape = [1] * x.dim()
        shape[dim] = -1
        y = (torch.addcmul(shift.view(shape), x, scale.view(shape)) if shift is not None
             else x * scale.view(shape))
        ctx.dim = dim
        ctx.has_shift = shift is not None
        ctx.save_for_backward(y, scale, shift if shift is not None else scale.new_empty(0))
        return y

    @staticmethod
    def backward(ctx, grad_y):
        y, scale, shift = ctx.saved_tensors
        dim = ctx.dim % y.dim()
        shape = [1] * y.dim()
        shape[dim] = -1
        reduce_dims = [d for d in range(y.dim()) if d != dim]
        grad_x = grad_scale = grad_shift = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y * scale.view(shape)
        sum_grad = grad_y.sum(reduce_dims) if ctx.has_shift and any(ctx.needs_input_grad[1:3]) \
            else None
        if ctx.needs_input_grad[1]:
            # Σ g·x with x = (y - β) / γ, without materialising x: (Σ g·y - β Σ g) / γ
            grad_scale = (grad_y * y).sum(reduce_dims)
            if ctx.has_shift:
                grad_scale = grad_scale - shift * sum_grad
            grad_scale = grad_scale / scale
        if ctx.has_shift and ctx.needs_input_grad[2]:
            grad_shift = sum_grad
        return grad_x, grad_scale, grad_shift, None


def scale_shift(x: torch.Tensor, scale: torch.Tensor, shift=None, dim: int = -1) -> torch.Tensor:
    """Per-channel ``x * scale + shift`` on dimension ``dim`` (memory-lean backward)."""
    if not torch.is_grad_enabled() or not (x.requires_grad or scale.requires_grad or
                                           (shift is not None and shift.requires_grad)):
        shape = [1] * x.dim()
        shape[dim] = -1
        y = x * scale.view(shape)
        return y + shift.view(shape) if shift is not None else y
    return _ScaleShift.apply(x, scale, shift, dim)
