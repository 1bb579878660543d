"""RLRR: residual low-rank rescaling (papers/rlrr_cvpr2024.txt).

Per Linear: ``W' = W + (s_left s_rightᵀ) ⊙ W``, ``b' = b + f``; SSF on the norms and the patch
embedding. Exactly mergeable (Eq. 20). Init: the official code draws s_left kaiming-uniform with
fan-in 1 (±2.45), which starts far from the pretrained model; here s_left = 0 and s_right = 1, so
the residual starts at zero (like LoRA's B = 0) while every factor still gets a gradient after
the first step.
"""
import torch
from torch import nn

from ..registry import PEFT_METHODS
from .base import MergeError, PeftMethod, PeftUnit
from .hooks import weight_and_bias_names
from .lora import in_out_features
from .ssf import SSFUnit


class RLRRUnit(PeftUnit):
    """Residual rescaling of one Linear (or fused in-projection). Option ``init_std`` (0)."""

    def attach(self):
        fan_in, fan_out = in_out_features(self.module)
        std = float(self.options.get('init_std', 0.0))
        self.left = self.add_parameter('rlrr_left', torch.zeros(fan_out).normal_(0, std) if std else torch.zeros(fan_out))
        self.right = self.add_parameter('rlrr_right', torch.ones(fan_in))
        w_name, b_name = weight_and_bias_names(self.module)
        if getattr(self.module, b_name) is None:
            raise MergeError(f'RLRR on {self.name}: the module has no bias to take the shift f; '
                             f'exclude it from the targets')
        self.shift = self.add_parameter('rlrr_bias', torch.zeros(fan_out))
        self.add_weight_transform('rlrr', (w_name, b_name), self.effective)

    def effective(self, module, params):
        w_name, b_name = weight_and_bias_names(module)
        weight = params[w_name]
        return {w_name: weight + torch.outer(self.left, self.right) * weight,
                b_name: params[b_name] + self.shift}

    def merge(self):
        w_name, b_name = weight_and_bias_names(self.module)
        for name, value in self.effective(self.module, {w_name: getattr(self.module, w_name),
                                                        b_name: getattr(self.module, b_name)}).items():
            getattr(self.module, name).copy_(value)


@PEFT_METHODS.register_module()
class RLRR(PeftMethod):
    """Residual low-rank rescaling of the block Linears plus SSF on norms and patch embedding.

    Args:
        targets: default qkv, proj, fc1, fc2 (RLRR) and patch_embed, norm1, norm2, final / output
            norms (SSF).
        init_std (float): std of s_left's normal init (0: start exactly at the pretrained model).
            SSF units take the SSF options.
    """
    default_targets = ('qkv', 'proj', 'fc1', 'fc2', 'patch_embed', 'norm1', 'norm2', 'final_norm',
                       'out_norm')

    def unit_class(self, module):
        if isinstance(module, (nn.Linear, nn.MultiheadAttention)):
            return RLRRUnit
        return SSFUnit
