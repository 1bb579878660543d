"""Adapter (Houlsby / AdaptFormer style): ``y + s · up(act(down(y)))`` on a module's output.

``up`` starts at zero so training starts at the pretrained function. Not mergeable: the
non-linearity cannot be folded into the stock weights.

``parallel=True`` feeds the adapter the module's *input* instead, ``y + s · up(act(down(x)))``
(SPT-Adapter's official attention projection: ``proj(h) + adapter(h)``). ``dropout`` (on the
adapter's input, not on the module's) and ``drop_path`` (per sample, on the adapter's output) act
in training only, as the official SPT-Adapter's Dropout(0.1) / DropPath(0.1).
"""
import math

import torch
import torch.nn.functional as F
from mmcv.cnn.bricks.drop import drop_path
from torch import nn

from ..registry import PEFT_METHODS
from .base import MergeError, PeftMethod, PeftUnit
from .card import MethodCard
from .delta_weight import ROW_BLOCK_OPTIONS, row_range
from .hooks import host_of, needs_reparam
from .options import Option
from .ssf import out_channels

_ACTIVATIONS = {'gelu': F.gelu, 'relu': F.relu}


def _in_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    raise TypeError(f'a parallel adapter reads a Linear\'s input, not {type(module).__name__}\'s')


class AdapterUnit(PeftUnit):
    """Bottleneck adapter on one module's output (or on one block of its output channels:
    ``row_block`` of ``row_blocks``, e.g. the q, k or v part of a fused q/k/v projection, as
    SPT's official code places adapters after separate q / k / v Linears)."""
    option_spec = dict(
        r=Option(8, int, min=1, doc='bottleneck width'),
        act=Option('gelu', str, choices=tuple(_ACTIVATIONS), doc='activation'),
        scale=Option(1.0, float, doc='output scale'),
        parallel=Option(False, bool, doc='feed the adapter the module input (y + A(x)) instead of '
                                         'its output (y + A(y))'),
        down_bias_init=Option('zero', str, choices=('zero', 'linear'),
                              doc="'zero', or 'linear': PyTorch's default Linear bias init "
                                  "U(±1/√fan_in) (official SPT-Adapter)"),
        dropout=Option(0.0, float, min=0, max=0.999, doc='dropout on the adapter input'),
        drop_path=Option(0.0, float, min=0, max=0.999,
                         doc='drop-path (stochastic depth, per sample) on the adapter output'),
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
        """``2·d·r + r + d`` with ``d`` the adapted channels (``out / row_blocks``; a parallel
        adapter on a square Linear, SPT's projection, costs the same)."""
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
        self.parallel = self.opts.parallel
        if self.parallel and block is not None:
            raise ValueError(f'{type(self.method).__name__} on {self.name}: a parallel adapter '
                             f'reads the whole input; it takes no row_block')
        fan_in = _in_channels(self.module) if self.parallel else dim
        suffix = '' if block is None else f'_block{block}'
        r = self.opts.r
        self.act = _ACTIVATIONS[self.opts.act]
        self.scale = self.opts.scale
        self.dropout, self.drop_path = self.opts.dropout, self.opts.drop_path
        down = torch.empty(r, fan_in)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        down_b = torch.zeros(r)
        if self.opts.down_bias_init == 'linear':  # as nn.Linear.reset_parameters
            bound = 1 / math.sqrt(fan_in)
            down_b.uniform_(-bound, bound)
        self.down_w = self.add_parameter('adapter_down_weight' + suffix, down)
        self.down_b = self.add_parameter('adapter_down_bias' + suffix, down_b)
        self.up_w = self.add_parameter('adapter_up_weight' + suffix, torch.zeros(dim, r))
        self.up_b = self.add_parameter('adapter_up_bias' + suffix, torch.zeros(dim))
        self.handles.append(self.module.register_forward_hook(self.forward_hook))

    def branch(self, x, training):
        """``s · up(act(down(x)))`` with the training-time dropout / drop-path."""
        if self.dropout:
            x = F.dropout(x, self.dropout, training)
        out = F.linear(self.act(F.linear(x, self.down_w, self.down_b)), self.up_w, self.up_b)
        out = out * self.scale
        return drop_path(out, self.drop_path, training) if self.drop_path else out

    def forward_hook(self, module, args, out):
        if self.parallel:
            return out + self.branch(args[0], module.training).to(out.dtype)
        start, stop = self.rows
        part = out if stop - start == out.shape[-1] else out[..., start:stop]
        part = part + self.branch(part, module.training)
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
