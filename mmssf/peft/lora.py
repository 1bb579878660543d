"""LoRA: ``W x + (α / r) B A x``; A kaiming-uniform, B zero. Merged as ``W' = W + (α/r) B A``
(Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022)."""
import math

import torch
import torch.nn.functional as F
from mmcv.cnn.bricks.drop import drop_path
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
    """Low-rank update of one Linear (or fused in-projection).

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
        row_block=Option(None, int, min=0,
                         doc='tune only this block of the output rows (None: all rows)'),
        row_blocks=Option(1, int, min=1,
                          doc='equal output-row blocks that row_block counts in (3 on a fused '
                              'q/k/v projection: q, k, v)'))
    prefixes = ('lora_', )

    @classmethod
    def can_wrap(cls, module, host=None):
        return isinstance(module, nn.Linear) or (isinstance(module, nn.MultiheadAttention)
                                                 and module._qkv_same_embed_dim)

    @classmethod
    def num_params(cls, module, r, row_blocks=1):
        """``r·(in + out / row_blocks)``: a LoRA on one block of ``row_blocks`` output-row blocks."""
        fan_in, fan_out = in_out_features(module)
        return r * (fan_in + fan_out // row_blocks)

    def row_range(self, fan_out):
        """``(start, stop)`` of the tuned output rows."""
        block, blocks = self.opts.row_block, self.opts.row_blocks
        if block is None:
            return 0, fan_out
        if block >= blocks or fan_out % blocks:
            raise OptionError(f'{type(self.method).__name__} on {self.name}: row_block={block} of '
                              f'row_blocks={blocks} does not split its {fan_out} output rows '
                              f'into equal blocks (row_block must be < row_blocks)')
        size = fan_out // blocks
        return block * size, (block + 1) * size

    def attach(self):
        fan_in, fan_out = in_out_features(self.module)
        self.rows = self.row_range(fan_out)
        suffix = '' if self.opts.row_block is None else f'_block{self.opts.row_block}'
        self.r = self.opts.r
        self.scaling = (self.opts.alpha if self.opts.alpha is not None else self.r) / self.r
        a = torch.empty(self.r, fan_in)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_A = self.add_parameter('lora_A' + suffix, a)
        self.lora_B = self.add_parameter('lora_B' + suffix,
                                         torch.zeros(self.rows[1] - self.rows[0], self.r))
        self.dropout, self.drop_path = self.opts.dropout, self.opts.drop_path
        if self.reparam:
            for option, value in (('dropout', self.dropout), ('drop_path', self.drop_path)):
                if value:
                    raise OptionError(
                        f'{type(self.method).__name__} on {self.name}: {option}={value} cannot '
                        f'apply here: this module ({type(self.module).__name__}) is '
                        f're-parameterized, its input is never seen by a hook. Set {option}=0 '
                        f'for this target, e.g. '
                        f'targets={{{self.role or self.name!r}: dict({option}=0.0)}}')
            w_name, _ = weight_and_bias_names(self.module)
            self.add_weight_transform('lora' + suffix, (w_name, ), self.reparameterize)
        else:
            self.handles.append(self.module.register_forward_hook(self.forward_hook))

    def add_to_rows(self, full: torch.Tensor, part: torch.Tensor, dim: int) -> torch.Tensor:
        """``full`` with ``part`` added to the tuned rows along ``dim`` (out of place)."""
        start, stop = self.rows
        if stop - start == full.shape[dim]:
            return full + part
        dim = dim % full.dim()
        return full.slice_scatter(full.narrow(dim, start, stop - start) + part.to(full.dtype),
                                  dim, start, stop)

    def reparameterize(self, module, params):
        w_name, _ = weight_and_bias_names(module)
        return {w_name: self.add_to_rows(params[w_name], self.delta(), 0)}

    def delta(self) -> torch.Tensor:
        """The update of the tuned rows (``rows × in``)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward_hook(self, module, args, out):
        x = F.dropout(args[0], self.dropout, module.training) if self.dropout else args[0]
        update = F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling
        if self.drop_path:
            update = drop_path(update, self.drop_path, module.training)
        return self.add_to_rows(out, update, -1)

    def merge(self):
        w_name, _ = weight_and_bias_names(self.module)
        start, stop = self.rows
        getattr(self.module, w_name)[start:stop].add_(self.delta())


@PEFT_METHODS.register_module()
class LoRA(PeftMethod):
    """LoRA on the attention projections.

    Args:
        targets: default ``('qkv', )`` (the fused q/k/v projection of every block).
        r (int): rank. Default 8.
        alpha (float): scaling numerator; the update is scaled by alpha / r. Default r.
        dropout (float): dropout on the LoRA input. Default 0.
        drop_path (float): per-sample drop-path on the LoRA output. Default 0.
        row_block / row_blocks (int): tune only one block of the output rows (e.g. ``row_block=0,
            row_blocks=3``: q of a fused qkv). Default: all rows.
    """
    unit_cls = LoRAUnit
    default_targets = ('qkv', )
