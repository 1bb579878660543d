"""Autograd ops whose saved tensors are chosen for training memory."""
import torch


class _ScaleShift(torch.autograd.Function):
    """``y = x * scale + shift`` along one channel dim, saving only ``y`` for backward.

    A plain ``x * scale + shift`` saves its input ``x``; the op after SSF (attention, GELU, the
    next Linear) saves ``y``, so both would be kept. The input is recovered in backward as
    ``(y - shift) / scale``, so SSF adds no activation memory of its own.
    """

    @staticmethod
    def forward(ctx, x, scale, shift, dim):
        shape = [1] * x.dim()
        shape[dim] = -1
        scale_v = scale.view(shape)
        y = x * scale_v
        if shift is not None:
            y = y + shift.view(shape)
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
        if ctx.needs_input_grad[1]:
            x = y - shift.view(shape) if ctx.has_shift else y
            x = x / scale.view(shape)
            grad_scale = (grad_y * x).sum(reduce_dims)
        if ctx.has_shift and ctx.needs_input_grad[2]:
            grad_shift = grad_y.sum(reduce_dims)
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
