"""Autograd ops whose saved tensors are chosen for training memory."""
import torch
import torch.nn.functional as F

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


class _RebuiltLinear(torch.autograd.Function):
    """``y = x W'ᵀ + b'`` with ``(W', b') = rebuild(W, b, tensors)``, saving ``x`` (and the
    inputs of ``rebuild``), never ``W'``; ``W'`` is rebuilt in backward.

    Memory: applying a re-parameterized weight as ``F.linear(x, W', b')`` makes autograd keep
    ``W'`` (an ``out × in`` tensor that is no parameter, so it is a copy) for the input gradient,
    and the intermediates of ``rebuild`` (RLRR: ``s_l s_rᵀ`` and the product with ``W``; SNELL:
    the kernel's distances, ``ΔW``, its gate) for the parameters' gradients: several ``out × in``
    tensors per tuned Linear between forward and backward, more than full fine-tuning keeps for
    the same Linear (its weight is a parameter, nothing is copied). This op keeps ``x`` — what a
    plain Linear with a trainable weight keeps — plus the small tensors ``rebuild`` reads (the
    frozen ``W`` and ``b`` are parameters: no copy). In backward it rebuilds ``W'`` once, computes
    ``∂x = g W'``, the transient ``∂W' = gᵀ x`` and ``∂b' = Σ g``, and back-propagates them
    through ``rebuild`` to the small tensors; each ``out × in`` tensor lives one Linear at a time.
    Compute: the forward matmul is the stock one (one matmul with ``W'``, no second one for the
    update) and backward does full fine-tuning's two matmuls; ``rebuild`` runs twice.

    ``rebuild(weight, bias, tensors, memo)`` returns ``(W', b', memo)``: in forward it is called
    with ``memo=None`` and may return small tensors computed from its inputs without gradient
    (SNELL's per-block thresholds: a selection that backward need not repeat); backward passes
    them back. ``b'`` may be None (a bias-free Linear).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, rebuild, *tensors):
        with torch.no_grad():
            w, b, memo = rebuild(weight, bias, tensors, None)
        needs_weight_side = any(ctx.needs_input_grad[1:3]) or any(ctx.needs_input_grad[4:])
        ctx.rebuild, ctx.has_bias = rebuild, bias is not None
        ctx.num_tensors, ctx.x_dtype = len(tensors), x.dtype
        empty = weight.new_empty(0)
        ctx.save_for_backward(x if needs_weight_side else empty, weight,
                              bias if bias is not None else empty, *tensors, *memo)
        # (under autocast F.linear computes in the autocast dtype, as the stock Linear would)
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, *rest = ctx.saved_tensors
        tensors, memo = rest[:ctx.num_tensors], tuple(rest[ctx.num_tensors:])
        bias = bias if ctx.has_bias else None
        need = ctx.needs_input_grad
        need_inputs = [need[1], need[2] and bias is not None] + list(need[4:])
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(n) if t is not None else None
                      for t, n in zip([weight, bias, *tensors], need_inputs)]
            w, b, _ = ctx.rebuild(leaves[0], leaves[1], tuple(leaves[2:]), memo)
        grad_x = None
        if need[0]:
            grad_x = (grad @ w.detach().to(grad.dtype)).to(ctx.x_dtype)
        grads = [None] * len(leaves)
        if any(need_inputs):
            outputs, out_grads = [], []
            g2 = grad.reshape(-1, grad.shape[-1])
            if w.requires_grad:
                x2 = x.reshape(-1, x.shape[-1]).to(g2.dtype)
                outputs.append(w)
                out_grads.append((g2.t() @ x2).to(w.dtype))  # ∂W' (out × in), transient
            if b is not None and b.requires_grad:
                outputs.append(b)
                out_grads.append(g2.sum(0, dtype=b.dtype))
            wanted = [t for t, n in zip(leaves, need_inputs) if n]
            got = iter(torch.autograd.grad(outputs, wanted, out_grads, allow_unused=True))
            grads = [next(got) if n else None for n in need_inputs]
        return (grad_x, grads[0], grads[1], None, *grads[2:])


def rebuilt_linear(x: torch.Tensor, weight: torch.Tensor, bias, rebuild, *tensors) -> torch.Tensor:
    """``F.linear(x, W', b')`` with ``(W', b', _) = rebuild(weight, bias, tensors, None)``, keeping
    only ``x`` and ``tensors`` for backward (see :class:`_RebuiltLinear`).

    ``rebuild`` must be differentiable in ``weight``, ``bias`` and ``tensors`` (plain torch ops).
    Without gradients, and under ``torch.compile`` (whose partitioner decides what is saved), this
    is the plain ``F.linear`` of the rebuilt weight.
    """
    if (not torch.is_grad_enabled() or torch.compiler.is_compiling() or
            not any(t is not None and t.requires_grad for t in (x, weight, bias, *tensors))):
        w, b, _ = rebuild(weight, bias, tensors, None)
        return F.linear(x, w, b)
    return _RebuiltLinear.apply(x, weight, bias, rebuild, *tensors)
