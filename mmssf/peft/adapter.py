"""Adapter (Houlsby / AdaptFormer style): ``y + s · up(act(down(y)))`` on a module's output.

``up`` starts at zero so training starts at the pretrained function. Not mergeable: the
non-linearity cannot be folded into the stock weights.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import PEFT_METHODS
from .base import MergeError, PeftMethod, PeftUnit
from .ssf import out_channels

_ACTIVATIONS = {'gelu': F.gelu, 'relu': F.relu}


class AdapterUnit(PeftUnit):
    """Bottleneck adapter on one module's output. Options: ``r`` (8), ``act`` ('gelu'), ``scale`` (1)."""
    mergeable = False

    def attach(self):
        dim = out_channels(self.module)
        r = int(self.options.get('r', 8))
        act = self.options.get('act', 'gelu')
        if act not in _ACTIVATIONS:
            raise ValueError(f'Adapter act must be one of {sorted(_ACTIVATIONS)}, got {act!r}')
        self.act = _ACTIVATIONS[act]
        self.scale = float(self.options.get('scale', 1.0))
        down = torch.empty(r, dim)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        self.down_w = self.add_parameter('adapter_down_weight', down)
        self.down_b = self.add_parameter('adapter_down_bias', torch.zeros(r))
        self.up_w = self.add_parameter('adapter_up_weight', torch.zeros(dim, r))
        self.up_b = self.add_parameter('adapter_up_bias', torch.zeros(dim))
        self.handles.append(self.module.register_forward_hook(self.forward_hook))

    def forward_hook(self, module, args, out):
        hidden = self.act(F.linear(out, self.down_w, self.down_b))
        return out + F.linear(hidden, self.up_w, self.up_b) * self.scale

    def merge(self):
        raise MergeError('Adapter cannot be merged: its non-linear bottleneck has no stock weight')


@PEFT_METHODS.register_module()
class Adapter(PeftMethod):
    """Sequential bottleneck adapters.

    Args:
        targets: default ``('fc2', )``: after the MLP of every block.
        r (int): bottleneck width. Default 8.
        act (str): 'gelu' or 'relu'. Default 'gelu'.
        scale (float): output scale. Default 1.
    """
    unit_cls = AdapterUnit
    default_targets = ('fc2', )
    mergeable = False

    def not_mergeable_reason(self):
        return ('Adapter cannot be merged into the stock backbone: its bottleneck is non-linear; '
                'export the PEFT-only state dict instead')
