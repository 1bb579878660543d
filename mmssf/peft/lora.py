"""LoRA: ``W x + (α / r) B A x``; A kaiming-uniform, B zero. Merged as ``W' = W + (α/r) B A``
(Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022)."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import PEFT_METHODS
from .base import PeftMethod, PeftUnit
from .hooks import weight_and_bias_names
from .options import Option, OptionError


def in_out_features(module: nn.Module):
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim, 3 * module.embed_dim
    raise TypeError(f'LoRA / RLRR tune a Linear or an nn.MultiheadAttention in-projection, '
                    f'not {type(module).__name__}')


class LoRAUnit(PeftUnit):
    """Low-rank update of one Linear (or fused in-projection)."""
    option_spec = dict(
        r=Option(8, int, min=1, doc='rank'),
        alpha=Option(None, float, min=0, min_exclusive=True,
                     doc='scaling numerator: the update is scaled by alpha / r (None: alpha = r)'),
        dropout=Option(0.0, float, min=0, max=0.999, doc='dropout on the LoRA input'))
    prefixes = ('lora_', )

    @classmethod
    def can_wrap(cls, module, host=None):
        return isinstance(module, nn.Linear) or (isinstance(module, nn.MultiheadAttention)
                                                 and module._qkv_same_embed_dim)

    @classmethod
    def num_params(cls, module, r):
        fan_in, fan_out = in_out_features(module)
        return r * (fan_in + fan_out)

    def attach(self):
        fan_in, fan_out = in_out_features(self.module)
        self.r = self.opts.r
        self.scaling = (self.opts.alpha if self.opts.alpha is not None else self.r) / self.r
        a = torch.empty(self.r, fan_in)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_A = self.add_parameter('lora_A', a)
        self.lora_B = self.add_parameter('lora_B', torch.zeros(fan_out, self.r))
        self.dropout = self.opts.dropout
        if self.reparam and self.dropout:
            raise OptionError(
                f'{type(self.method).__name__} on {self.name}: dropout={self.dropout} cannot apply '
                f'here: this module ({type(self.module).__name__}) is re-parameterized, its input '
                f'is never seen by a hook. Set dropout=0 for this target, e.g. '
                f'targets={{{self.role or self.name!r}: dict(dropout=0.0)}}')
        if self.reparam:
            w_name, _ = weight_and_bias_names(self.module)
            self.add_weight_transform('lora', (w_name, ), self.reparameterize)
        else:
            self.handles.append(self.module.register_forward_hook(self.forward_hook))

    def reparameterize(self, module, params):
        w_name, _ = weight_and_bias_names(module)
        return {w_name: params[w_name] + self.delta()}

    def delta(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward_hook(self, module, args, out):
        x = F.dropout(args[0], self.dropout, module.training) if self.dropout else args[0]
        return out + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def merge(self):
        w_name, _ = weight_and_bias_names(self.module)
        getattr(self.module, w_name).add_(self.delta())


@PEFT_METHODS.register_module()
class LoRA(PeftMethod):
    """LoRA on the attention projections.

    Args:
        targets: default ``('qkv', )`` (the fused q/k/v projection of every block).
        r (int): rank. Default 8.
        alpha (float): scaling numerator; the update is scaled by alpha / r. Default r.
        dropout (float): dropout on the LoRA input. Default 0.
    """
    unit_cls = LoRAUnit
    default_targets = ('qkv', )
