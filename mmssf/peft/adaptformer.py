"""AdaptFormer: the AdaptMLP beside (or after) every block's MLP (Chen et al., "AdaptFormer: Adapting
Vision Transformers for Scalable Visual Recognition", NeurIPS 2022; official code
ShoufaChen/AdaptFormer, ``models/adapter.py`` and ``models/custom_modules.py``).

Each block's MLP sub-layer gets a bottleneck ``A(h) = s · up(dropout(relu(down(h))))`` (width m,
official ``ffn_num`` 64, ``s = 0.1``, dropout 0.1)::

    parallel (official default):  x = y + mlp_branch(y) + A(y)     (y: the stream after attention)
    sequential:                   x = y + (z + A(z)),  z = mlp_branch(y)

where ``mlp_branch`` ends with the block's drop-path (the official adds the adapter after it).
Initialisation as the official ``init_option='lora'``: down kaiming-uniform (a = √5), up and both
biases zero, so training starts at the pretrained function. The official image code uses no
adapter LayerNorm (``ffn_adapter_layernorm_option='none'``); ``norm='in'`` / ``'out'`` restore its
other options (an ``nn.LayerNorm`` of the adapter's input / output), ``learnable_scale=True`` its
``'learnable_scalar'`` (a trained scalar starting at 1 instead of ``s``). Parameters per block:
``2dm + m + d`` (+ 2d with a norm, + 1 with a learnable scale).

The official code has ViT only; on Swin every block gets the same adapter (our choice, as Mona).
The sites are reached with hooks on stock modules, from the target table's
:class:`~mmssf.peft.targets.TokenMap`: the stream ``y`` is the input of the norm before the MLP (a
pre-hook keeps it), the MLP branch's term is the output of ``mlp_branch`` (mmcv's
``FFN.dropout_layer``, timm's ``drop_path2``), and the block's output is its own (Adapter+'s
``'post'``). :class:`BlockAdapterUnit` holds this placement for every adapter of this kind.

Not mergeable: the ReLU bottleneck has no stock weight to fold into; the PEFT-only state dict is
the export.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import PEFT_METHODS
from .block_adapter import BlockAdapterMethod, BlockAdapterUnit
from .card import MethodCard
from .options import Option, OptionError

class AdaptFormerUnit(BlockAdapterUnit):
    """The AdaptMLP of one block."""
    option_spec = dict(
        r=Option(64, int, min=1, doc='bottleneck width (official ffn_num 64)'),
        position=Option('parallel', str, choices=('parallel', 'sequential'),
                        doc='beside the MLP (official ffn_option) or after it'),
        scale=Option(0.1, float, doc='output scale s (official ffn_adapter_scalar 0.1)'),
        learnable_scale=Option(False, bool, doc="a trained scalar starting at 1 instead of s "
                                                "(official 'learnable_scalar')"),
        norm=Option('none', str, choices=('none', 'in', 'out'),
                    doc="LayerNorm of the adapter's input / output (official "
                        "ffn_adapter_layernorm_option; images: 'none')"),
        dropout=Option(0.1, float, min=0, max=0.999, doc='dropout after the ReLU (official 0.1)'))
    prefixes = ('adaptformer_', )
    positions = {'parallel': 'parallel', 'sequential': 'branch'}

    def build(self, dim):
        if self.opts.learnable_scale and self.opts.scale != self.option_spec['scale'].default:
            raise OptionError(f'AdaptFormer on {self.name}: scale={self.opts.scale} has no effect '
                              f'with learnable_scale=True (the learned scale starts at 1, as the '
                              f'official learnable_scalar); drop one of them')
        r = self.opts.r
        down = torch.empty(r, dim)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5))  # official init_option='lora'
        self.add_parameter('adaptformer_down_weight', down)
        self.add_parameter('adaptformer_down_bias', torch.zeros(r))
        self.add_parameter('adaptformer_up_weight', torch.zeros(dim, r))
        self.add_parameter('adaptformer_up_bias', torch.zeros(dim))
        if self.opts.norm != 'none':
            self.add_parameter('adaptformer_norm_weight', torch.ones(dim))
            self.add_parameter('adaptformer_norm_bias', torch.zeros(dim))
        if self.opts.learnable_scale:
            self.add_parameter('adaptformer_scale', torch.ones(1))

    def _norm(self, h):
        # nn.LayerNorm(d) of the official Adapter: eps 1e-5
        return F.layer_norm(h, (self.dim, ), self.param('norm_weight'), self.param('norm_bias'))

    def increment(self, h):
        if self.opts.norm == 'in':
            h = self._norm(h)
        h = F.relu(F.linear(h, self.param('down_weight'), self.param('down_bias')))
        h = F.dropout(h, self.opts.dropout, self.module.training)
        scale = self.param('scale') if self.opts.learnable_scale else self.opts.scale
        h = F.linear(h, self.param('up_weight'), self.param('up_bias')) * scale
        return self._norm(h) if self.opts.norm == 'out' else h


@PEFT_METHODS.register_module()
class AdaptFormer(BlockAdapterMethod):
    """AdaptFormer's AdaptMLP beside the MLP of every block (official placement and init).

    Args:
        targets: default: every block (the token map's ``blocks``); a list of block names /
            regexes / suffixes otherwise.
    """
    unit_cls = AdaptFormerUnit
    card = MethodCard(zoo='adaptformer', folder='adaptformer', suites=('vtab1k', 'fgvc'),
                      label='AdaptFormer (parallel, 64)',
                      count='2·d·m + m + d per block (official code, m = 64)')
