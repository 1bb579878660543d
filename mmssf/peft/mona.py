"""Mona: the multi-cognitive visual adapter (Yin et al., "5%>100%: Breaking Performance Shackles of
Full Fine-Tuning on Visual Recognition Tasks", CVPR 2025).

Two adapters per block, on the token stream after the attention residual and after the MLP
residual (official code Leiyi-Hu/mona: ``x = x + attn(norm1(x)); x = mona1(x); x = x +
mlp(norm2(x)); x = mona2(x)``). Each adapter, on tokens ``x`` of width d with bottleneck m = 64::

    h = LN(x) · γ + x · γₓ                      scaled LayerNorm (γ = 1e-6, γₓ = 1 at init)
    h = down(h)                                  Linear d → m
    g = h on the token grid (B, m, H, W)
    g = (dw3(g) + dw5(g) + dw7(g)) / 3 + g       3×3 / 5×5 / 7×7 depthwise convolutions
    g = g + proj(g)                              1×1 convolution m → m
    y = x + up(dropout(gelu(g)))                 Linear m → d, dropout 0.1

Initialisation as the official code (whose backbone ``init_weights`` re-initialises the adapters'
Linears and LayerNorm before loading the pretrained weights): down / up truncated-normal
(std 0.02), zero biases; LayerNorm weight 1, bias 0; convolutions PyTorch's default. Only the
adapters train (``'my_module'`` in the official freeze); their LayerNorm gets no weight decay (the
official optimizers' ``custom_keys={'norm': dict(decay_mult=0.)}``). Parameters per adapter:
``2dm + 5d + m² + 88m``.

The official code has Swin only. On ViT the same two adapters follow the attention and the MLP of
every layer; the cls token (not on the grid) skips the convolutions and takes the rest of the
adapter (our choice).

The adapters act on the stream *between* stock sub-layers, so they are realised with hooks on the
stock modules (facts from the target table's :class:`~mmssf.peft.targets.TokenMap`): where the
block itself adds the attention residual (mmcv-style blocks), a pre-hook on the norm before the
MLP replaces its input by ``mona1(x)`` and a pre-hook on the MLP passes the same tensor as its
``identity``; where the
attention module returns the sum (mmseg ViT), a hook on its output; after the MLP, a hook on the
MLP's output; where the block adds both residuals itself and no module sees the sums (timm:
``x = x + drop_path1(ls1(attn(norm1(x))))``), each residual branch's output gains the adapter's
increment of the sum it forms (the block's input, resp. the MLP norm's input, is kept by a
pre-hook). The grid ``(H, W)`` comes from each Swin block's ``hw_shape`` argument, or from the
ViT patch embedding's output (its convolution's map for timm).

Not mergeable: the adapters are non-linear and have no stock parameter; the PEFT-only state dict is
the export.

Memory: besides the adapters' own parameters (and their AdamW moments), training keeps each
adapter's activations for backward — O(tokens · (d + 5m)) per adapter — like any bottleneck
adapter; the frozen backbone keeps what its backward to the earlier adapters needs.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import PEFT_METHODS
from .base import PeftUnit
from .block_adapter import BlockAdapterMethod
from .card import MethodCard
from .options import Option
from .targets import token_map

SITES = ('attn', 'ffn')
KERNELS = (3, 5, 7)


class MonaUnit(PeftUnit):
    """The two Mona adapters of one block (after its attention and after its MLP)."""
    option_spec = dict(
        r=Option(64, int, min=1, doc='bottleneck width (official 64)'),
        dropout=Option(0.1, float, min=0, max=0.999, doc='dropout after the GELU (official 0.1)'))
    prefixes = ('mona_', )
    no_decay = tuple(f'mona_{site}_norm' for site in SITES)
    mergeable = False

    def merge_blocker(self):
        return (f'Mona on {self.name} cannot be merged: its adapters are non-linear (convolutions '
                f'and GELU) and have no stock weight; export the PEFT-only state dict instead')

    def attach(self):
        facts = token_map(self.method.table)
        block = self.module
        self.norm_module = getattr(block, facts.norm)
        self.ffn_module = getattr(block, facts.ffn)
        dim = self.norm_module.normalized_shape[-1]
        self.dim, self.hidden, self.dropout = dim, self.opts.r, self.opts.dropout
        for site in SITES:
            self._add_adapter(site, dim, self.hidden)
        self.extra = facts.extra_tokens(self.backbone)
        self.grid = None
        self._stash = None
        self._residual = {}
        if facts.grid == 'block_arg':
            self.handles.append(block.register_forward_pre_hook(self._grid_from_block,
                                                                with_kwargs=True))
        else:
            source = dict(self.backbone.named_modules())[facts.grid_source]
            self.handles.append(source.register_forward_hook(
                self._grid_from_embed if facts.grid == 'patch_embed' else self._grid_from_map))
        if facts.attn_residual == 'branch':
            # x = x + branch1(attn(norm1(x))); x = x + branch2(mlp(norm2(x))) with no module
            # seeing the sums: each branch's output gains mona's increment of the sum it makes
            self.handles.append(block.register_forward_pre_hook(self._keep_input('attn')))
            self.handles.append(self.norm_module.register_forward_pre_hook(
                self._keep_input('ffn')))
            for site, branch in zip(SITES, facts.branches):
                self.handles.append(getattr(block, branch).register_forward_hook(
                    self._add_increment(site)))
            return
        if facts.attn_residual == 'block':
            self.handles.append(self.norm_module.register_forward_pre_hook(self._after_attn_pre))
            self.handles.append(self.ffn_module.register_forward_pre_hook(self._ffn_identity,
                                                                          with_kwargs=True))
        else:
            self.handles.append(getattr(block, facts.attn).register_forward_hook(
                lambda module, args, out: self.adapt('attn', out)))
        self.handles.append(self.ffn_module.register_forward_hook(
            lambda module, args, out: self.adapt('ffn', out)))

    def _add_adapter(self, site, dim, hidden):
        def add(name, tensor):
            self.add_parameter(f'mona_{site}_{name}', tensor)

        add('norm_weight', torch.ones(dim))
        add('norm_bias', torch.zeros(dim))
        add('gamma', torch.full((dim, ), 1e-6))
        add('gammax', torch.ones(dim))
        add('down_weight', nn.init.trunc_normal_(torch.empty(hidden, dim), std=0.02))
        add('down_bias', torch.zeros(hidden))
        for k in KERNELS:  # nn.Conv2d's default init (fan-in k·k for a depthwise kernel)
            bound = 1 / math.sqrt(k * k)
            add(f'conv{k}_weight', torch.empty(hidden, 1, k, k).uniform_(-bound, bound))
            add(f'conv{k}_bias', torch.empty(hidden).uniform_(-bound, bound))
        bound = 1 / math.sqrt(hidden)
        add('proj_weight', torch.empty(hidden, hidden, 1, 1).uniform_(-bound, bound))
        add('proj_bias', torch.empty(hidden).uniform_(-bound, bound))
        add('up_weight', nn.init.trunc_normal_(torch.empty(dim, hidden), std=0.02))
        add('up_bias', torch.zeros(dim))

    # -- the grid ------------------------------------------------------------------------------
    def _grid_from_block(self, module, args, kwargs):
        hw = args[1] if len(args) > 1 else kwargs.get('hw_shape')
        self.grid = tuple(int(v) for v in hw)

    def _grid_from_embed(self, module, args, out):
        self.grid = tuple(int(v) for v in out[1])

    def _grid_from_map(self, module, args, out):
        self.grid = tuple(int(v) for v in out.shape[-2:])

    # -- the stream where the block adds both residuals itself (timm) ------------------------
    def _keep_input(self, site):
        def hook(module, args):
            self._residual[site] = args[0]
        return hook

    def _add_increment(self, site):
        def hook(module, args, out):
            stream = self._residual.pop(site, None)
            if stream is None:
                raise RuntimeError(f'Mona on {self.name}: the {site} branch ran before its '
                                   f'block / norm; the block does not have the structure mmssf '
                                   f'expects')
            return out + self.increment(site, stream + out)
        return hook

    # -- the stream after the attention residual (mmcv-style blocks) ---------------------------
    def _after_attn_pre(self, module, args):
        adapted = self.adapt('attn', args[0])
        self._stash = (args[0], adapted)
        return (adapted, ) + tuple(args[1:])

    def _ffn_identity(self, module, args, kwargs):
        stash, self._stash = self._stash, None
        if stash is None:
            raise RuntimeError(f'Mona on {self.name}: {type(module).__name__} ran without the norm '
                               f'before it; the block does not have the structure mmssf expects')
        original, adapted = stash
        if kwargs.get('identity') is original:
            kwargs = dict(kwargs, identity=adapted)
        elif len(args) > 1 and args[1] is original:
            args = (args[0], adapted) + tuple(args[2:])
        else:
            raise RuntimeError(f'Mona on {self.name}: the MLP was not given the attention '
                               f'residual as its identity; the block does not have the structure '
                               f'mmssf expects')
        return args, kwargs

    # -- the adapter ---------------------------------------------------------------------------
    def adapt(self, site: str, x: torch.Tensor) -> torch.Tensor:
        return x + self.increment(site, x)

    def increment(self, site: str, x: torch.Tensor) -> torch.Tensor:
        """``mona(x) - x``: the adapter's bottleneck path."""
        p = {name[len(f'mona_{site}_'):]: self.module._parameters[name]
             for name in self.param_names if name.startswith(f'mona_{site}_')}
        h = F.layer_norm(x, (self.dim, ), p['norm_weight'], p['norm_bias']) * p['gamma'] \
            + x * p['gammax']
        h = F.linear(h, p['down_weight'], p['down_bias'])
        batch, tokens, width = h.shape
        if self.grid is None:
            raise RuntimeError(f'Mona on {self.name}: no token grid was seen before the block ran')
        height, wide = self.grid
        extra = self.extra
        if tokens != extra + height * wide:
            raise RuntimeError(f'Mona on {self.name}: {tokens} tokens do not fit {extra} extra + '
                               f'{height}×{wide} grid tokens')
        grid = h[:, extra:].transpose(1, 2).reshape(batch, width, height, wide)
        multi = sum(F.conv2d(grid, p[f'conv{k}_weight'], p[f'conv{k}_bias'], padding=k // 2,
                             groups=width) for k in KERNELS) / len(KERNELS) + grid
        multi = multi + F.conv2d(multi, p['proj_weight'], p['proj_bias'])
        spatial = multi.flatten(2).transpose(1, 2)
        h = torch.cat([h[:, :extra], spatial], dim=1) if extra else spatial
        h = F.dropout(F.gelu(h), self.dropout, self.module.training)
        return F.linear(h, p['up_weight'], p['up_bias'])


@PEFT_METHODS.register_module()
class Mona(BlockAdapterMethod):
    """Mona adapters after the attention and after the MLP of every block (official placement).

    Args:
        targets: default: every block (the token map's ``blocks``); a list of block names /
            regexes / suffixes otherwise.
    """
    unit_cls = MonaUnit
    card = MethodCard(zoo='mona', folder='mona', label='Mona (bottleneck 64)',
                      count='2dm + 5d + m² + 88m per adapter, two per block (official code)')

    def not_mergeable_reason(self):
        return ('Mona cannot be merged into the stock backbone: its adapters are non-linear '
                '(convolutions, GELU); export the PEFT-only state dict instead')
