"""Adapter+: a bottleneck adapter after every block's MLP with channel-wise scaling (Steitz & Roth,
"Adapters Strike Back", CVPR 2024; official code visinf/adapter_plus,
``adapter_plus/vit_adapter.py`` and ``conf/adapter/adapter_plus.yaml``).

Adapter+ (the paper's Sec. 3 and the official ``config: post``, ``scaling: channel``): on the
block's output ``z = y + mlp_branch(y)``, with a bottleneck of width m (official ``dim`` 8)::

    z + s ⊙ drop_path(up(dropout(gelu(down(z)))))        s ∈ R^d, initialised to 1

Initialisation as the official ``init: houlsby``: down and up weights truncated normal (std 0.01,
cut at ±0.02), zero biases — so the adapter starts near, not at, zero. Regularisation as the
official base config: drop-path 0.1 on the adapter's output (per sample, training only), no
dropout. Only the adapters and the head train; biases, the scaling and a norm get no weight decay
(the official ``add_weight_decay``: 1-D tensors and ``.scaling``). Parameters per block:
``2dm + m + 2d`` (``bias=False``: ``2dm + d``; ``scaling='learned'``: one scalar instead of d;
``'none'``: no scaling).

The paper's other configurations are options: ``position='parallel'`` (``z + A(y)``, y the stream
entering the MLP sub-layer), ``'intermediate'`` (``y + (b + A(b))``, b the MLP branch) — as the
official ``forward_parallel`` / ``forward_intermediate``; ``scaling='learned'`` / ``'none'`` (a
scalar / 1.0); ``norm=True`` (a LayerNorm on the adapter's input, eps of the block's norms, as the
official ``norm_layer``); ``init='lora'`` / ``'bert'``; ``act='none'``; ``pre_dropout``. The
official ``'pfeiffer'`` placement computes the same function as ``'post'``
(``y + b + A(y + b)``); its ``'pre'`` and two-adapter ``'houlsby'`` placements are not offered.

The official code has ViT only; on Swin every block gets the same adapter (our choice). The sites
are those of :class:`~mmssf.peft.adaptformer.BlockAdapterUnit`. Not mergeable: the bottleneck is
non-linear; the PEFT-only state dict is the export.
"""
import math

import torch
import torch.nn.functional as F
from mmcv.cnn.bricks.drop import drop_path
from torch import nn

from ..registry import PEFT_METHODS
from .block_adapter import BlockAdapterMethod, BlockAdapterUnit
from .card import MethodCard
from .options import Option, OptionError


class AdapterPlusUnit(BlockAdapterUnit):
    """The Adapter+ adapter of one block."""
    option_spec = dict(
        r=Option(8, int, min=1, doc='bottleneck width (official dim 8)'),
        position=Option('post', str, choices=('post', 'parallel', 'intermediate'),
                        doc='after the block (Adapter+), beside the MLP, or after the MLP branch'),
        scaling=Option('channel', str, choices=('channel', 'learned', 'none'),
                       doc='channel-wise scale (Adapter+), one learned scalar, or none'),
        init=Option('houlsby', str, choices=('houlsby', 'lora', 'bert'),
                    doc='initialisation of the projections (official houlsby)'),
        norm=Option(False, bool, doc="LayerNorm on the adapter's input (official norm_layer)"),
        act=Option('gelu', str, choices=('gelu', 'none'), doc='bottleneck activation'),
        bias=Option(True, bool, doc='biases in the projections'),
        dropout=Option(0.0, float, min=0, max=0.999, doc='dropout in the bottleneck (official 0)'),
        pre_dropout=Option(False, bool, doc="the dropout acts on the adapter's input instead"),
        drop_path=Option(0.1, float, min=0, max=0.999,
                         doc="per-sample drop-path on the adapter's output (official 0.1)"))
    prefixes = ('adapterplus_', )
    no_decay = ('adapterplus_scaling', 'adapterplus_norm_', 'adapterplus_down_bias',
                'adapterplus_up_bias')
    positions = {'post': 'post', 'parallel': 'parallel', 'intermediate': 'branch'}

    def build(self, dim):
        if self.opts.pre_dropout and not self.opts.dropout:
            raise OptionError(f'AdapterPlus on {self.name}: pre_dropout=True moves the dropout, '
                              f'but dropout is 0; set dropout > 0 as well')
        r, init = self.opts.r, self.opts.init
        down, up = torch.empty(r, dim), torch.empty(dim, r)
        down_bias, up_bias = torch.zeros(r), torch.zeros(dim)
        if init == 'houlsby':  # the paper's std (Houlsby et al.'s code: 0.001)
            for weight in (down, up):
                nn.init.trunc_normal_(weight, std=0.01, a=-0.02, b=0.02)
        elif init == 'lora':
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))
            down_bias.uniform_(-1 / math.sqrt(dim), 1 / math.sqrt(dim))
            up.zero_()
        else:  # bert
            nn.init.normal_(down, std=0.02)
            nn.init.normal_(up, std=0.02)
        if self.opts.norm:
            self.add_parameter('adapterplus_norm_weight', torch.ones(dim))
            self.add_parameter('adapterplus_norm_bias', torch.zeros(dim))
        self.add_parameter('adapterplus_down_weight', down)
        self.add_parameter('adapterplus_up_weight', up)
        if self.opts.bias:
            self.add_parameter('adapterplus_down_bias', down_bias)
            self.add_parameter('adapterplus_up_bias', up_bias)
        if self.opts.scaling != 'none':
            size = dim if self.opts.scaling == 'channel' else 1
            self.add_parameter('adapterplus_scaling', torch.ones(size))

    def increment(self, h):
        opts, training = self.opts, self.module.training
        if opts.norm:
            h = F.layer_norm(h, (self.dim, ), self.param('norm_weight'), self.param('norm_bias'),
                             self.block_norm_eps)
        if opts.pre_dropout:
            h = F.dropout(h, opts.dropout, training)
        h = F.linear(h, self.param('down_weight'), self.param('down_bias'))
        if opts.act == 'gelu':
            h = F.gelu(h)
        if not opts.pre_dropout:
            h = F.dropout(h, opts.dropout, training)
        h = F.linear(h, self.param('up_weight'), self.param('up_bias'))
        if opts.drop_path:
            h = drop_path(h, opts.drop_path, training)
        scaling = self.param('scaling')
        return h if scaling is None else h * scaling


@PEFT_METHODS.register_module()
class AdapterPlus(BlockAdapterMethod):
    """Adapter+ after every block (official placement, channel-wise scaling, Houlsby init).

    Args:
        targets: default: every block (the token map's ``blocks``); a list of block names /
            regexes / suffixes otherwise.
    """
    unit_cls = AdapterPlusUnit
    card = MethodCard(zoo='adapterplus', folder='adapterplus', label='Adapter+ (post, 8)',
                      count='2·d·m + m + 2d per block (official code, m = 8)')
