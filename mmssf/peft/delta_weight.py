"""The delta-weight unit: what LoRA, DoRA, SNELL (and SPT's structured LoRA) have in common.

Each of them changes one weight matrix ``W`` (a Linear's, or the fused in-projection of an
``nn.MultiheadAttention``) by a tensor built from the unit's own factors: ``W' = W + ΔW`` (LoRA,
SNELL) or a function of ``W`` and ``ΔW`` (DoRA). A subclass says how to make its tensors
(:meth:`DeltaWeightUnit.create`) and what ``ΔW`` is (:meth:`DeltaWeightUnit.delta`, the shape of
huggingface peft's ``get_delta_weight``); this base does the rest, once:

* attaching: a forward hook adding ``x ΔWᵀ`` to the output where the module's output can be hooked,
  otherwise (and for kinds that set ``always_reparam``) a weight transform — the effective weight
  is swapped in while the host runs (:mod:`mmssf.peft.hooks`);
* merging: the effective weight is written into the stock one (exact: the same tensor the weight
  transform builds);
* the ``alpha / r`` scaling, for kinds with an ``alpha`` option;
* regularisation, for kinds with ``dropout`` / ``drop_path`` options: dropout on the update's input
  and per-sample drop-path (mmcv's ``drop_path``) on its output, training only — and the refusal of
  either where the module is re-parameterized (its input and output are never seen by a hook);
* row blocks, for kinds with ``row_block`` / ``row_blocks`` options: only one block of the output
  rows is tuned (a q, k or v block of a fused q/k/v projection, as separate Linears have them);
* the parameter cost with one signature, ``num_params(module, r, row_blocks=1)``, from the kind's
  :meth:`DeltaWeightUnit.count` (SPT's allocation asks it for any structured kind).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn.bricks.drop import drop_path
from torch import nn

from .base import PeftUnit
from .hooks import weight_and_bias_names
from .options import Option, OptionError

#: the options of the shared features, for kinds that offer them (one declaration, one doc)
ROW_BLOCK_OPTIONS = dict(
    row_block=Option(None, int, min=0,
                     doc='tune only this block of the output rows (None: all rows)'),
    row_blocks=Option(1, int, min=1,
                      doc='equal output-row blocks that row_block counts in (3 on a fused '
                          'q/k/v projection: q, k, v)'))


def in_out_features(module: nn.Module) -> Tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim, 3 * module.embed_dim
    raise TypeError(f'LoRA / RLRR tune a Linear or an nn.MultiheadAttention in-projection, '
                    f'not {type(module).__name__}')


def row_range(owner: str, size: int, block: Optional[int], blocks: int,
              what: str = 'output rows') -> Tuple[int, int]:
    """``(start, stop)`` of block ``block`` of ``blocks`` equal blocks of ``size`` rows (all rows
    when ``block`` is None)."""
    if block is None:
        if blocks != 1:
            raise OptionError(f'{owner}: row_blocks={blocks} needs row_block (which of the blocks '
                              f'to tune); set both, or neither to tune all {what}')
        return 0, size
    if block >= blocks or size % blocks:
        raise OptionError(f'{owner}: row_block={block} of row_blocks={blocks} does not split its '
                          f'{size} {what} into equal blocks (row_block must be < row_blocks)')
    step = size // blocks
    return block * step, (block + 1) * step


def add_to_rows(full: torch.Tensor, part: torch.Tensor, rows: Tuple[int, int],
                dim: int) -> torch.Tensor:
    """``full`` with ``part`` added to ``rows`` along ``dim`` (out of place, in ``full``'s dtype)."""
    start, stop = rows
    if stop - start == full.shape[dim]:
        return full + part.to(full.dtype)
    dim = dim % full.dim()
    return full.slice_scatter(full.narrow(dim, start, stop - start) + part.to(full.dtype),
                              dim, start, stop)


class DeltaWeightUnit(PeftUnit):
    """One weight matrix changed by a tensor built from the unit's factors (see module doc).

    Subclasses set ``option_spec`` (with ``r``; ``alpha``, ``dropout``, ``drop_path``,
    ``row_block`` / ``row_blocks`` switch the shared features on), ``prefixes`` and implement
    :meth:`count`, :meth:`create` and :meth:`delta`; :meth:`update` (the hooked path) and
    :meth:`effective_weight` have defaults.
    """
    #: re-parameterize the weight even where the output could be hooked (DoRA: ``W'`` is no sum)
    always_reparam = False
    #: ``fn(x, p, training)`` dropping the update's input in place of ``F.dropout`` (SPT-LoRA
    #: shares one draw among a block's q / k / v units); None: ``F.dropout``
    input_dropout = None
    #: where ``dropout`` acts: ``'input'`` (the update's input, LoRA's place) or ``'update'`` (the
    #: kind applies it inside :meth:`update`: FacT drops its core's output)
    dropout_site = 'input'
    #: a re-parameterized weight (no hook) with ``dropout`` set: ``'refuse'`` it with an error, or
    #: ``'skip'`` it (the unit's ``dropout_skipped`` is set; the method warns once for all)
    reparam_dropout = 'refuse'

    @classmethod
    def can_wrap(cls, module, host=None):
        return isinstance(module, nn.Linear) or (isinstance(module, nn.MultiheadAttention)
                                                 and module._qkv_same_embed_dim)

    @classmethod
    def count(cls, fan_in: int, fan_out: int, r: int) -> int:
        """Trainable parameters of one rank-``r`` unit on an ``fan_in → fan_out`` matrix."""
        raise NotImplementedError

    @classmethod
    def num_params(cls, module, r, row_blocks=1):
        """:meth:`count` of a unit on one of ``row_blocks`` blocks of ``module``'s output rows."""
        fan_in, fan_out = in_out_features(module)
        return cls.count(fan_in, fan_out // row_blocks, r)

    def has_option(self, name: str) -> bool:
        return name in self.option_spec

    @property
    def key(self) -> str:
        """Weight-transform key (also the suffix of a row block's tensor names)."""
        return self.prefixes[0].rstrip('_') + self.suffix

    def attach(self):
        self.fan_in, self.fan_out = in_out_features(self.module)
        block = self.opts.row_block if self.has_option('row_block') else None
        blocks = self.opts.row_blocks if self.has_option('row_blocks') else 1
        self.rows = row_range(f'{type(self.method).__name__} on {self.name}', self.fan_out,
                              block, blocks)
        self.suffix = '' if block is None else f'_block{block}'
        self.r = self.opts.r
        alpha = self.opts.alpha if self.has_option('alpha') else None
        self.scaling = (alpha if alpha is not None else self.r) / self.r
        self.dropout = self.opts.dropout if self.has_option('dropout') else 0.0
        self.drop_path = self.opts.drop_path if self.has_option('drop_path') else 0.0
        self.create(self.fan_in, self.rows[1] - self.rows[0])
        w_name, _ = weight_and_bias_names(self.module)
        if self.reparam or self.always_reparam:
            self.refuse_regularisation()
            self.add_weight_transform(self.key, (w_name, ), self.reparameterize)
        else:
            self.attach_hooked()

    def attach_hooked(self) -> None:
        """Attach where the module's output can be hooked (default: a hook adding ``x ΔWᵀ``)."""
        self.handles.append(self.module.register_forward_hook(self.forward_hook))

    def refuse_regularisation(self) -> None:
        self.dropout_skipped = bool(self.dropout) and self.reparam_dropout == 'skip'
        if self.dropout_skipped:
            self.dropout = 0.0
        for option in ('dropout', 'drop_path'):
            value = getattr(self, option)
            if value:
                raise OptionError(
                    f'{type(self.method).__name__} on {self.name}: {option}={value} cannot apply '
                    f'here: this module ({type(self.module).__name__}) is re-parameterized, its '
                    f'input and output are never seen by a hook. Set {option}=0 for this target, '
                    f'e.g. targets={{{self.role or self.name!r}: dict({option}=0.0)}}')

    # -- what a kind defines --------------------------------------------------------------------
    def create(self, fan_in: int, rows: int) -> None:
        """Add the unit's tensors (:meth:`add_parameter`) for a ``rows × fan_in`` update."""
        raise NotImplementedError

    def delta(self) -> torch.Tensor:
        """``ΔW`` of the tuned rows (``rows × in``), scaled."""
        raise NotImplementedError

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """``x ΔWᵀ`` (the hooked path; kinds override it with a cheaper factored form)."""
        return F.linear(x, self.delta().to(x.dtype))

    def effective_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight the tuned module computes with."""
        return add_to_rows(weight, self.delta(), self.rows, 0)

    # -- shared ---------------------------------------------------------------------------------
    def reparameterize(self, module, params):
        w_name, _ = weight_and_bias_names(module)
        return {w_name: self.effective_weight(params[w_name])}

    def forward_hook(self, module, args, out):
        x = args[0]
        if self.dropout and self.dropout_site == 'input':
            x = (self.input_dropout or F.dropout)(x, self.dropout, module.training)
        update = self.update(x)
        if self.drop_path:
            update = drop_path(update, self.drop_path, module.training)
        return add_to_rows(out, update, self.rows, -1)

    def merge(self):
        w_name, _ = weight_and_bias_names(self.module)
        weight = getattr(self.module, w_name)
        weight.copy_(self.effective_weight(weight))
