"""LoRA: ``W x + (α / r) B A x``; A kaiming-uniform, B zero. Merged as ``W' = W + (α/r) B A``
(Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022)."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import PEFT_METHODS
from .base import PeftMethod
from .card import MethodCard
from .delta_weight import ROW_BLOCK_OPTIONS, DeltaWeightUnit, in_out_features  # noqa: F401
from .options import Option


class LoRAUnit(DeltaWeightUnit):
    """Low-rank update ``ΔW = (α / r) B A`` of one Linear (or fused in-projection).

    With ``row_block`` set, only one block of the output rows is tuned (``B`` covers those rows):
    on a fused q/k/v projection, ``row_block=0/1/2`` of ``row_blocks=3`` is a LoRA on a separate
    q / k / v Linear, as SPT's official code has them; it merges exactly into those rows.
    ``dropout`` (on the LoRA input) and ``drop_path`` (per-sample, on the LoRA output) act while
    training only; merging folds the weights, which they do not touch.
    """
    option_spec = dict(
        r=Option(8, int, min=1, doc='rank'),
        alpha=Option(None, float, min=0, min_exclusive=True,
                     doc='scaling numerator: the update is scaled by alpha / r (None: alpha = r)'),
        dropout=Option(0.0, float, min=0, max=0.999, doc='dropout on the LoRA input'),
        drop_path=Option(0.0, float, min=0, max=0.999,
                         doc='drop-path (stochastic depth, per sample) on the LoRA output'),
        **ROW_BLOCK_OPTIONS)
    prefixes = ('lora_', )

    @classmethod
    def count(cls, fan_in, fan_out, r):
        """``r·(in + out)`` (``out / row_blocks`` on one row block)."""
        return r * (fan_in + fan_out)

    def create(self, fan_in, rows):
        a = torch.empty(self.r, fan_in)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_A = self.add_parameter('lora_A' + self.suffix, a)
        self.lora_B = self.add_parameter('lora_B' + self.suffix, torch.zeros(rows, self.r))

    def delta(self) -> torch.Tensor:
        """The update of the tuned rows (``rows × in``)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def update(self, x):
        return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling


@PEFT_METHODS.register_module()
class LoRA(PeftMethod):
    """LoRA on the attention projections.

    Args:
        targets: default ``('qkv', )`` (the fused q/k/v projection of every block).
        ``row_block=0, row_blocks=3`` tunes the q rows of a fused qkv only.
    """
    unit_cls = LoRAUnit
    card = MethodCard(zoo='lora', folder='lora', suites=('vtab1k', 'fgvc'), label='LoRA (qkv, r=8)',
                      count='r·(in + out) per tuned Linear (Hu et al. 2022)')
    default_targets = ('qkv', )
