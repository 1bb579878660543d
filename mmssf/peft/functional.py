"""Autograd ops whose saved tensors are chosen for training memory."""
import torch

#: the op rebuilds its input from its output only where every channel has ``|γ| >= max(|β|, this)``
MIN_RECOVERABLE_SCALE = 1 / 16


class _ScaleShift(torch.autograd.Function):
    """``y = x * scale + shift`` along one channel dim, saving ``y`` (rarely ``x``) for backward.

    Memory: a plain ``x * scale + shift`` saves its input ``x``; the op after SSF (attention, GELU,
    the next Linear) saves ``y``, so both would be kept. The scale gradient ``Σ g·x`` is computed
    from ``y`` as ``(Σ g·y - β Σ g) / γ``, so SSF adds no activation memory of its own. ``y`` has
    ``x``'s dtype (the dtype the merged op would produce), so under autocast the bf16 / fp16 ``y``
    is also the very tensor the next op keeps (a float32 ``y`` would be kept in float32 *and* in
    the next op's low-precision copy).

    Safety: recovering ``x = (y - β) / γ`` loses what rounding ``y`` lost, amplified by ``1/γ``:
    ``|δx| <= u (|x| + |β| / |γ|)`` with ``u`` the unit roundoff of ``y``'s dtype (2⁻⁹ in bf16),
    and ``γ = 0`` gives ``0 / 0``. So ``y`` is saved only when every channel has
    ``|γ| >= max(|β|, 1/16)`` (then ``|δx| <= u (|x| + 1)``: no worse than holding a unit-scale
    ``x`` in that dtype); otherwise ``save_input=True`` makes the op keep ``x`` and compute
    ``Σ g·x`` directly (one activation more, for as long as a scale stays that small).
    """

    @staticmethod
    def forward(ctx, x, scale, shift, dim, save_input):
        shape = [1] * x.dim()
        shape[dim] = -1
        # (computed in the wider dtype, like the merged op's accumulation, then stored as x's)
        y = (torch.addcmul(shift.view(shape), x, scale.view(shape)) if shift is not None
             else x * scale.view(shape)).to(x.dtype)
        ctx.dim = dim
        ctx.has_shift = shift is not None
        ctx.save_input = save_input
        empty = scale.new_empty(0)
        ctx.save_for_backward(x if save_input else y, scale,
                              shift if shift is not None else empty)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        saved, scale, shift = ctx.saved_tensors
        dim = ctx.dim % saved.dim()
        shape = [1] * saved.dim()
        shape[dim] = -1
        reduce_dims = [d for d in range(saved.dim()) if d != dim]
        acc = scale.dtype  # (reductions accumulate in the parameters' dtype, not in bf16 / fp16)
        grad_x = grad_scale = grad_shift = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y * scale.view(shape).to(grad_y.dtype)
        sum_grad = (grad_y.sum(reduce_dims, dtype=acc)
                    if ctx.has_shift and any(ctx.needs_input_grad[1:3]) else None)
        if ctx.needs_input_grad[1]:
            grad_scale = (grad_y * saved).sum(reduce_dims, dtype=acc)
            if not ctx.save_input:
                # Σ g·x with x = (y - β) / γ, without materialising x: (Σ g·y - β Σ g) / γ
                if ctx.has_shift:
                    grad_scale = grad_scale - shift * sum_grad
                grad_scale = grad_scale / scale
        if ctx.has_shift and ctx.needs_input_grad[2]:
            grad_shift = sum_grad
        return grad_x, grad_scale, grad_shift, None, None


def output_recovers_input(scale: torch.Tensor, shift=None) -> bool:
    """Whether :class:`_ScaleShift` may rebuild its input from its output (see its docstring).
    (One device sync on an accelerator; asked only in training forwards that need the scale's
    gradient.)"""
    with torch.no_grad():
        bound = (shift.detach().abs().clamp(min=MIN_RECOVERABLE_SCALE) if shift is not None
                 else MIN_RECOVERABLE_SCALE)
        return bool((scale.detach().abs() >= bound).all())


def scale_shift(x: torch.Tensor, scale: torch.Tensor, shift=None, dim: int = -1) -> torch.Tensor:
    """Per-channel ``x * scale + shift`` on dimension ``dim`` (memory-lean backward), in ``x``'s
    dtype."""
    if not torch.is_grad_enabled() or not (x.requires_grad or scale.requires_grad or
                                           (shift is not None and shift.requires_grad)):
        shape = [1] * x.dim()
        shape[dim] = -1
        y = x * scale.view(shape)
        return (y + shift.view(shape) if shift is not None else y).to(x.dtype)
    # Under torch.compile the partitioner decides what is saved: the op keeps its input (no
    # data-dependent branch in the graph, no division).
    save_input = (torch.compiler.is_compiling() or
                  (scale.requires_grad and not output_recovers_input(scale, shift)))
    return _ScaleShift.apply(x, scale, shift, dim, save_input)
