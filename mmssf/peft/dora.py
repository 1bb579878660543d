"""DoRA: weight-decomposed low-rank adaptation (Liu et al., "DoRA: Weight-Decomposed Low-Rank
Adaptation", ICML 2024).

``W' = m ⊙ (W + (α/r) B A) / ‖W + (α/r) B A‖`` where the norm is taken per output feature (one
value per row of a Linear's ``out × in`` weight — the paper's column norm of its ``in × out``
notation) and the magnitude ``m`` starts at ``‖W‖``, so with B = 0 training starts at the
pretrained function. Applied as a re-parameterization of the weight and merged by writing ``W'``
into it: exact, the stock key set is unchanged. On a fused q/k/v projection the per-row norm is the
same as on separate q, k, v Linears.

Following the paper (Sec. 4.3), the norm is treated as a constant in backward by default
(``detach_norm=True``): the gradient then needs no second pass through the norm, at a small,
documented difference to the exact gradient.
"""
import math

import torch
from torch import nn

from ..registry import PEFT_METHODS
from .base import PeftMethod
from .card import MethodCard
from .delta_weight import DeltaWeightUnit
from .hooks import weight_and_bias_names
from .options import Option


class DoRAUnit(DeltaWeightUnit):
    """Magnitude and low-rank direction update of one Linear (or fused in-projection): ``ΔW =
    (α / r) B A`` changes the direction; the weight is always re-parameterized (``W'`` is no sum)."""
    option_spec = dict(
        r=Option(8, int, min=1, doc='rank of the direction update'),
        alpha=Option(None, float, min=0, min_exclusive=True,
                     doc='scaling numerator: B A is scaled by alpha / r (None: alpha = r)'),
        detach_norm=Option(True, bool, doc='treat the weight norm as a constant in backward '
                           '(paper Sec. 4.3)'))
    prefixes = ('dora_', )
    no_decay = ('dora_magnitude', )
    always_reparam = True

    @classmethod
    def count(cls, fan_in, fan_out, r):
        """``r·(in + out) + out`` (the magnitude: one per output row)."""
        return r * (fan_in + fan_out) + fan_out

    def create(self, fan_in, rows):
        w_name, _ = weight_and_bias_names(self.module)
        weight = getattr(self.module, w_name)
        a = torch.empty(self.r, fan_in)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.add_parameter('dora_A', a)
        self.add_parameter('dora_B', torch.zeros(rows, self.r))
        self.add_parameter('dora_magnitude', weight.detach().norm(dim=1).clone())

    def delta(self) -> torch.Tensor:
        """The direction update ``(α / r) B A``."""
        return (self.module.dora_B @ self.module.dora_A) * self.scaling

    def effective_weight(self, weight):
        direction = weight + self.delta()
        norm = direction.norm(dim=1, keepdim=True)
        if self.opts.detach_norm:
            norm = norm.detach()
        return direction * (self.module.dora_magnitude.unsqueeze(1) / norm)


@PEFT_METHODS.register_module()
class DoRA(PeftMethod):
    """DoRA on the attention projections.

    Args:
        targets: default ``('qkv', )`` (the fused q/k/v projection of every block), as LoRA.
    """
    unit_cls = DoRAUnit
    card = MethodCard(zoo='dora', folder='dora', label='DoRA (qkv, r=8)',
                      count='r·(in + out) + out per tuned Linear (magnitude: one per row)')
    default_targets = ('qkv', )
