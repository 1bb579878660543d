"""SNELL: sparse tuning with kernelized LoRA (Shen et al., "Expanding Sparse Tuning for Low Memory
Usage", NeurIPS 2024).

Per Linear, ``W' = W + ΔWˢ``. The update ``ΔW`` is merged from two low-rank factors with a
non-linear kernel instead of LoRA's inner product, so it can have full rank; it is then sparsified
by competition: only the entries of largest magnitude survive.

Kernel (paper Sec. 3.2 and App. B; official code ssfgunner/SNELL): the *piecewise-linear* kernel
with P = 2 pieces. Each factor row of width r is split into P chunks of r / P and

    ΔW[o, i] = Σ_p α_p · ‖B[p, o] − A[p, i]‖₂,    α_p = scale · (−1)^p  (fixed, scale = 0.1)

with ``A`` (in × r) and ``B`` (out × r) trained, both drawn kaiming-uniform as the official code
(so, unlike LoRA, ``ΔW ≠ 0`` at the start).

Sparsification (Sec. 3.3), per matrix with sparsity ratio ``s`` (the fraction of entries zeroed):

* ``sparsify='official'`` (default, the official code): ``t`` = the ``s``-quantile of ``|ΔW|``
  (linear interpolation) and ``ΔWˢ = ΔW ⊙ stopgrad(|ΔW| · 1[|ΔW| > t])``;
* ``sparsify='paper'`` (Eq. 5): ``t`` = the ⌈s·m·n⌉-th smallest ``|ΔW|`` and
  ``ΔWˢ = ΔW ⊙ stopgrad(max(|ΔW| − t, 0))``.

``sparsity=0`` is the official code's plain kernelized LoRA ("KLoRA": ``ΔWˢ = ΔW``). Neither the
threshold nor the gate gets a gradient (both are computed from a detached ``ΔW`` in the official
code). The official code has no default ratio (its CLI default 0 disables sparsification); its
scripts pick one per task between 0 and 0.995 — ours defaults to 0.9, the paper's ablation value
(Table 5a) and its ViT-L / ViT-H search set {0, 0.9}.

Positions: every Linear of every block (Sec. 4.1), with *separate* q, k and v updates as the
official ViT and Swin code: on a fused ``qkv`` projection each of the three row blocks gets its own
factors and its own threshold (``qkv_blocks=3``). Per Linear of ``in → out``: ``r · (in + out)``
parameters (the paper omits counts, App. E.1; ViT-B/16, r = 8: 1,327,104).

Trained besides the factors, as the official code (``VisionTransformerSNELL.freeze_stages``:
``head``, ``cls_token`` and the ``additional_*`` updates; norms, position embedding and patch
embedding stay frozen; its Swin has no class token): ViT's class token (``cls_token=True``, no
weight decay as the official ``no_weight_decay``; +768 on ViT-B), and the task head, which is
outside the backbone here. The official code regularises training with Dropout(0.1) on the inputs
of q / k / v / fc1 / fc2 and DropPath(0.1) on every update's output; here ``dropout`` and
``drop_path`` default to 0 (the zoo configs set the official values).

Merge: ``W ← W + ΔWˢ`` — exact, the stock keys are unchanged.

Memory (the paper's point, Fig. 3b). The optimizer holds only the factors (``r · (in + out)``
numbers and their two AdamW moments per Linear, as LoRA). On a plain ``nn.Linear`` the tuned
Linear runs as one :func:`~mmssf.peft.functional.rebuilt_linear` ``y = x (W + ΔWˢ)ᵀ + b`` (its
forward is replaced; class, parameters and hooks stay) that keeps only ``x`` and the factors for
backward and *rebuilds* ``ΔWˢ`` there (as the official code's checkpointing does; the per-block
threshold is kept from the forward, so the selection runs once a step): no ``out × in`` tensor
lives between forward and backward — the dense ``ΔW``, its gate, ``W + ΔWˢ`` and the gradient
``gᵀx`` exist one Linear at a time, transiently — and a step does full fine-tuning's matmuls, not
a second one for the update. With ``dropout`` / ``drop_path`` in training the update needs its own
input and output: the stock Linear then runs and a hook adds ``x ΔWˢᵀ`` (an autograd function with
the same memory, one matmul more each way). Where the weight cannot be hooked (mmseg's fused
``nn.MultiheadAttention`` in-projection and its ``out_proj``) the effective weight ``W + ΔWˢ`` is
built before the attention runs and autograd keeps the kernel's intermediates (a few ``out × in``
tensors per such Linear) until backward.
"""
import math
import torch
import torch.nn.functional as F

from ..registry import PEFT_METHODS
from .base import PeftMethod
from .card import MethodCard
from .delta_weight import DeltaWeightUnit
from .functional import rebuilt_linear
from .hooks import is_plain_linear, replace_forward
from .options import Option, OptionError
from .targets import cls_token_name

PIECES = 2  # P of the piecewise-linear kernel (paper App. B: "We set P=2")


class _KernelDelta(torch.autograd.Function):
    """``ΔW = Σ_p α_p ‖B[p, o] − A[p, i]‖₂`` with its gradient written out.

    Backward, with ``H_p = α_p ∂ΔW / d_p`` (``d_p`` the distances; 0 where ``d_p = 0``, the
    subgradient ``torch.cdist`` takes there): ``∂B[p, o] = Σ_i H_p[o, i] (B[p, o] − A[p, i])`` and
    ``∂A[p, i] = Σ_o H_p[o, i] (A[p, i] − B[p, o])``, i.e. two skinny matmuls per piece with a
    column of ones appended (it yields the row / column sums of ``H_p`` in the same pass). This
    replaces autograd through ``cdist`` (its square-root, clamp and norm backward: several more
    passes over each ``out × in`` tensor). The distances are kept for backward (the lean Linear
    calls this only inside its own backward, where they live one Linear at a time).
    """

    @staticmethod
    def forward(ctx, factor_in, factor_out, scale):
        dist = torch.cdist(factor_out, factor_in)  # (blocks, P, out_b, in)
        delta = dist[:, 0] - dist[:, 1]  # α_p = scale · (−1)^p: scale · Σ_p (−1)^p d_p
        for p in range(2, dist.shape[1]):
            delta.add_(dist[:, p], alpha=(-1.0) ** p)
        delta.mul_(scale)
        ctx.scale = scale
        ctx.save_for_backward(factor_in, factor_out, dist)
        return delta

    @staticmethod
    def backward(ctx, grad):
        factor_in, factor_out, dist = ctx.saved_tensors
        grad = grad.to(dist.dtype)
        grad_in = torch.empty_like(factor_in)
        grad_out = torch.empty_like(factor_out)
        for p in range(dist.shape[1]):
            alpha = ctx.scale * (-1.0) ** p
            h = torch.div(grad, dist[:, p]).nan_to_num_(0.0, 0.0, 0.0)  # d = 0: none, as cdist
            a, b = factor_in[:, p], factor_out[:, p]
            rows = h @ torch.cat([a, a.new_ones(a.shape[:-1] + (1, ))], -1)  # (blocks, out, w+1)
            cols = (torch.cat([b, b.new_ones(b.shape[:-1] + (1, ))], -1).transpose(1, 2) @ h
                    ).transpose(1, 2)  # (blocks, in, w+1)
            grad_out[:, p] = (rows[..., -1:] * b - rows[..., :-1]) * alpha
            grad_in[:, p] = (cols[..., -1:] * a - cols[..., :-1]) * alpha
        return grad_in, grad_out, None


def kernel_delta(factor_in: torch.Tensor, factor_out: torch.Tensor, scale: float) -> torch.Tensor:
    """``ΔW`` of each row block: ``Σ_p α_p ‖B[p, o] − A[p, i]‖₂`` with ``α_p = scale · (−1)^p``.

    Args:
        factor_in: ``(blocks, P, in, r / P)``.
        factor_out: ``(blocks, P, out_b, r / P)``.

    Returns:
        ``(blocks, out_b, in)``.
    """
    return _KernelDelta.apply(factor_in, factor_out, scale)


def interpolated_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Per row of ``values`` (2-d), the ``q``-quantile with linear interpolation: bit for bit
    ``torch.quantile(row, q)`` (the official threshold), without its full sort and its input-size
    limit.

    ``torch.quantile`` takes ``q`` in the input's dtype, the rank ``q·(n − 1)`` of it in double
    precision, the two order statistics around the rank from a sorted copy and ``torch.lerp``
    between them (in the input's dtype) with weight ``rank − ⌊rank⌋``. Here the same rank
    arithmetic and the same ``lerp`` are applied to the same two order statistics, found by
    selection instead of a sort: the ``n − ⌊rank⌋`` largest values (``topk``, unsorted; a
    selection, not a sort) hold exactly the sorted values from ``⌊rank⌋`` on, so their smallest
    is the lower statistic and their second smallest the upper one.
    """
    n = values.shape[1]
    rank = float(torch.tensor(q, dtype=values.dtype)) * (n - 1)
    low, high = math.floor(rank), math.ceil(rank)
    weight = torch.tensor(rank - low, dtype=values.dtype, device=values.device)
    top = values.topk(n - low, dim=1, sorted=False).values  # sorted(values)[low:] as a multiset
    if high == low:
        v_low = v_high = top.min(dim=1, keepdim=True).values
    else:
        two = top.topk(2, dim=1, largest=False, sorted=True).values
        v_low, v_high = two[:, :1], two[:, 1:]
    return torch.lerp(v_low, v_high, weight)


def sparsify(delta: torch.Tensor, sparsity: float, mode: str, threshold=None):
    """Competition-based sparsification of each block of ``delta`` (``(blocks, out_b, in)``).

    Returns ``(ΔWˢ, threshold)``: the per-block threshold (``(blocks, 1)``, None for
    ``sparsity=0``) is computed from ``|ΔW|`` unless given (a backward pass reuses the forward's:
    the factors have not changed in between).
    """
    if sparsity == 0:
        return delta, None
    magnitude = delta.detach().abs().flatten(1)
    if mode == 'official':
        if threshold is None:
            threshold = interpolated_quantile(magnitude, sparsity)
        gate = magnitude.masked_fill_(magnitude <= threshold, 0.0)  # F.threshold(|ΔW|, t, 0)
    else:
        if threshold is None:
            k = max(1, math.ceil(sparsity * magnitude.shape[1]))
            threshold = magnitude.kthvalue(k, dim=1, keepdim=True).values
        gate = magnitude.sub_(threshold).clamp_min_(0)
    return delta * gate.view_as(delta), threshold


class _KernelDeltaLinear(torch.autograd.Function):
    """``x ΔWˢᵀ`` keeping only ``x`` (and the factors) for backward; ``ΔWˢ`` is rebuilt there (the
    hooked update, used where dropout / drop-path need the update's own input and output)."""

    @staticmethod
    def forward(ctx, x, factor_in, factor_out, unit):
        with torch.no_grad():
            delta = unit.sparse_delta(factor_in, factor_out)
        ctx.save_for_backward(x, factor_in, factor_out)
        ctx.unit = unit
        # (under autocast the result is in the autocast dtype, like the stock Linear's output)
        return F.linear(x, delta.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        x, factor_in, factor_out = ctx.saved_tensors
        with torch.enable_grad():
            a = factor_in.detach().requires_grad_()
            b = factor_out.detach().requires_grad_()
            delta = ctx.unit.sparse_delta(a, b)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ delta.detach().to(grad.dtype)).to(x.dtype)
        grad_a = grad_b = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            g2 = grad.reshape(-1, grad.shape[-1])
            x2 = x.reshape(-1, x.shape[-1]).to(g2.dtype)
            grad_delta = (g2.t() @ x2).to(delta.dtype)  # (out, in), transient
            grad_a, grad_b = torch.autograd.grad(delta, (a, b), grad_delta)
        return grad_x, grad_a, grad_b, None


class SNELLUnit(DeltaWeightUnit):
    """Sparse kernelized low-rank update of one Linear (or fused in-projection)."""
    option_spec = dict(
        r=Option(8, int, min=2, doc=f'rank of the factors (a multiple of the {PIECES} kernel '
                 'pieces; the paper\'s SNELL-r)'),
        sparsity=Option(0.9, float, min=0, max=0.9999,
                        doc='fraction of the entries of each update zeroed (0: kernelized LoRA)'),
        sparsify=Option('official', str, choices=('official', 'paper'),
                        doc="'official': ΔW·|ΔW| above the s-quantile (official code); "
                            "'paper': ΔW·max(|ΔW| − t, 0) (Eq. 5)"),
        scale=Option(0.1, float, min=0, min_exclusive=True,
                     doc='|α_p| of the piecewise-linear kernel (official 0.1)'),
        qkv_blocks=Option(3, int, choices=(1, 3),
                          doc='independent updates on a fused qkv (3: q, k, v as the official '
                              'code)'),
        dropout=Option(0.0, float, min=0, max=0.999,
                       doc='dropout on the update\'s input (official 0.1, not on proj)'),
        drop_path=Option(0.0, float, min=0, max=0.999,
                         doc='per-sample drop of the update\'s output (official 0.1)'))
    prefixes = ('snell_', )

    @classmethod
    def count(cls, fan_in, fan_out, r):
        return r * (fan_in + fan_out)

    def create(self, fan_in, rows):
        r = self.r
        if r % PIECES:
            raise OptionError(f'SNELL on {self.name}: r={r} must be a multiple of {PIECES} (the '
                              f'piecewise-linear kernel splits each factor row in {PIECES})')
        blocks = self.opts.qkv_blocks if self.method.table.qkv_blocks(self.name) == 3 else 1
        if rows % blocks:
            raise OptionError(f'SNELL on {self.name}: qkv_blocks={blocks} does not divide its '
                              f'{rows} output rows')
        self.blocks = blocks
        self.sparsity, self.mode = self.opts.sparsity, self.opts.sparsify
        self.scale = self.opts.scale
        width = r // PIECES
        # kaiming-uniform (a = √5) of the official (P, n, r / P) tensors: U(±1 / √(n · r / P))
        bound_in = 1 / math.sqrt(fan_in * width)
        bound_out = 1 / math.sqrt(rows // blocks * width)
        self.add_parameter('snell_in', torch.empty(blocks, PIECES, fan_in, width)
                           .uniform_(-bound_in, bound_in))
        self.add_parameter('snell_out', torch.empty(blocks, PIECES, rows // blocks, width)
                           .uniform_(-bound_out, bound_out))

    def sparse_delta(self, factor_in: torch.Tensor, factor_out: torch.Tensor,
                     threshold=None) -> torch.Tensor:
        """``ΔWˢ`` (out × in) from the factors (and the per-block threshold, if known)."""
        return self.sparse_delta_and_threshold(factor_in, factor_out, threshold)[0]

    def sparse_delta_and_threshold(self, factor_in, factor_out, threshold=None):
        delta, threshold = sparsify(kernel_delta(factor_in, factor_out, self.scale),
                                    self.sparsity, self.mode, threshold)
        return delta.reshape(self.fan_out, self.fan_in), threshold

    def rebuild(self, weight, bias, tensors, memo=None):
        """``(W + ΔWˢ, b, (threshold, ))`` for :func:`~mmssf.peft.functional.rebuilt_linear`; the
        backward call gets the forward's threshold back (no second selection)."""
        delta, threshold = self.sparse_delta_and_threshold(*tensors, memo[0] if memo else None)
        return weight + delta.to(weight.dtype), bias, (threshold, ) if threshold is not None else ()

    def attach_hooked(self):
        if is_plain_linear(self.module):
            self.handles.append(replace_forward(self.module, self.rebuilt_forward))
        else:
            super().attach_hooked()

    def rebuilt_forward(self, module, stock_forward, x):
        """A plain Linear computes ``x (W + ΔWˢ)ᵀ + b`` as one lean op; with dropout / drop-path
        in training the update needs its own input and output: the stock Linear plus the hook's
        ``x ΔWˢᵀ``."""
        if module.training and (self.dropout or self.drop_path):
            return self.forward_hook(module, (x, ), stock_forward(x))
        return rebuilt_linear(x, module.weight, module.bias, self.rebuild, module.snell_in,
                              module.snell_out)

    def delta(self) -> torch.Tensor:
        return self.sparse_delta(self.module.snell_in, self.module.snell_out)

    def update(self, x):
        return _KernelDeltaLinear.apply(x, self.module.snell_in, self.module.snell_out, self)


@PEFT_METHODS.register_module()
class SNELL(PeftMethod):
    """SNELL: sparse kernelized low-rank updates of every block Linear (official positions).

    Args:
        targets: default ``('qkv', 'proj', 'fc1', 'fc2')``.
        cls_token (bool): train the class token (where the backbone has one), as the official
            code does. Default True.
    """
    unit_cls = SNELLUnit
    card = MethodCard(zoo='snell', folder='snell', suites=('vtab1k', 'fgvc'),
                      label='SNELL-8 (all block Linears, s=0.9)',
                      count='r·(in + out) per Linear, separate q / k / v, + the class token '
                            '(the paper gives no counts, App. E.1)')
    default_targets = ('qkv', 'proj', 'fc1', 'fc2')

    def __init__(self, targets=None, cls_token=True, **options):
        if not isinstance(cls_token, bool):
            raise OptionError(f'SNELL: option cls_token={cls_token!r} must be True or False')
        super().__init__(targets=targets, **options)
        self.train_cls_token = cls_token
        self.cls_token_param = None

    def after_attach(self, backbone):
        self.cls_token_param = (cls_token_name(backbone, self.table) if self.train_cls_token
                                else None)

    def trainable_names(self, backbone):
        names = super().trainable_names(backbone)
        return names + [self.cls_token_param] if self.cls_token_param else names

    def no_weight_decay(self):
        """The class token gets none (the official ``no_weight_decay``)."""
        names = super().no_weight_decay()
        return names + [self.cls_token_param] if self.cls_token_param else names

    def describe(self) -> dict:
        return dict(super().describe(), cls_token=self.train_cls_token)

