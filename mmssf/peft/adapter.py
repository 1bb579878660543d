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
from .card import MethodCard
from .delta_weight import ROW_BLOCK_OPTIONS, row_range
from .hooks import host_of, needs_reparam
from .options import Option
from .ssf import out_channels

_ACTIVATIONS = {'gelu': F.gelu, 'relu': F.relu}


class AdapterUnit(PeftUnit):
    """Bottleneck adapter on one module's output (or on one block of its output channels:
    ``row_block`` of ``row_blocks``, e.g. the q, k or v part of a fused q/k/v projection, as
    SPT's official code places adapters after separate q / k / v Linears)."""
    option_spec = dict(
        r=Option(8, int, min=1, doc='bottleneck width'),
        act=Option('gelu', str, choices=tuple(_ACTIVATIONS), doc='activation'),
        scale=Option(1.0, float, doc='output scale'),
        **ROW_BLOCK_OPTIONS)
    prefixes = ('adapter_', )
    mergeable = False

    @classmethod
    def can_wrap(cls, module, host=None):
        """Its output must be hookable: not the fused attention of ``nn.MultiheadAttention``."""
        return (not isinstance(module, nn.MultiheadAttention)
                and (host is None or not needs_reparam(host, module)))

    @classmethod
    def num_params(cls, module, r, row_blocks=1):
        """``2·d·r + r + d`` with ``d`` the adapted channels (``out / row_blocks``)."""
        dim = out_channels(module) // row_blocks
        return 2 * dim * r + r + dim

    def merge_blocker(self):
        return (f'Adapter on {self.name} cannot be merged: its bottleneck is non-linear and has no '
                f'stock weight')

    def attach(self):
        if self.reparam:
            raise ValueError(f'Adapter cannot follow {self.name}: its output is computed inside '
                             f'{type(host_of(self.backbone, self.name)).__name__} and never seen by '
                             f'a hook; choose another target')
        block = self.opts.row_block
        self.rows = row_range(f'{type(self.method).__name__} on {self.name}',
                              out_channels(self.module), block, self.opts.row_blocks,
                              what='output channels')
        dim = self.rows[1] - self.rows[0]
        suffix = '' if block is None else f'_block{block}'
        r = self.opts.r
        self.act = _ACTIVATIONS[self.opts.act]
        self.scale = self.opts.scale
        down = torch.empty(r, dim)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        self.down_w = self.add_parameter('adapter_down_weight' + suffix, down)
        self.down_b = self.add_parameter('adapter_down_bias' + suffix, torch.zeros(r))
        self.up_w = self.add_parameter('adapter_up_weight' + suffix, torch.zeros(dim, r))
        self.up_b = self.add_parameter('adapter_up_bias' + suffix, torch.zeros(dim))
        self.handles.append(self.module.register_forward_hook(self.forward_hook))

    def forward_hook(self, module, args, out):
        start, stop = self.rows
        part = out if stop - start == out.shape[-1] else out[..., start:stop]
        hidden = self.act(F.linear(part, self.down_w, self.down_b))
        part = part + F.linear(hidden, self.up_w, self.up_b) * self.scale
        if part.shape[-1] == out.shape[-1]:
            return part
        return out.slice_scatter(part.to(out.dtype), out.dim() - 1, start, stop)

    def merge(self):
        raise MergeError('Adapter cannot be merged: its non-linear bottleneck has no stock weight')


@PEFT_METHODS.register_module()
class Adapter(PeftMethod):
    """Sequential bottleneck adapters.

    Args:
        targets: default ``('fc2', )``: after the MLP of every block.
    """
    unit_cls = AdapterUnit
    card = MethodCard(zoo='adapter', folder='adapter', suites=('vtab1k', 'fgvc'),
                      label='Adapter (fc2, r=8)',
                      count='2·d·r + r + d per adapted module of width d')
    default_targets = ('fc2', )
    mergeable = False

    def not_mergeable_reason(self):
        return ('Adapter cannot be merged into the stock backbone: its bottleneck is non-linear; '
                'export the PEFT-only state dict instead')
