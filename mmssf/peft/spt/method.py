"""SPT-LoRA and SPT-Adapter: tune where an allocation file says (He et al., "Sensitivity-Aware
Visual Parameter-Efficient Fine-Tuning", ICCV 2023).

Structured modules (LoRA-r / Adapter-r) go on the weight matrices (or q/k/v row blocks of a
fused projection) the allocation marks structured; sparse deltas on every other selected entry and
on the vectors tuned whole (all their entries); the class token trains as a stock parameter when
the allocation counts it. Build the allocation for a config with
``tools/analysis_tools/spt_sensitivity.py``; then::

    peft=dict(type='SPTLoRA', allocation='work_dirs/spt/allocation.json',
              dropout=0.1, drop_path=0.1)   # the official SPT-LoRA regularisation
"""
import logging
from collections import defaultdict
from typing import List

from mmengine.logging import print_log
from torch import nn

from ...registry import PEFT_METHODS
from ..adapter import AdapterUnit
from ..base import PeftMethod, PeftUnit
from ..card import MethodCard
from ..hooks import host_of, needs_reparam
from ..lora import LoRAUnit
from .allocation import QKV_BLOCKS, Allocation, split_block
from .sparse_delta import SparseDeltaUnit

#: options of the units that the allocation fixes (the structured units' rank and q/k/v blocks,
#: the sparse deltas' indices)
_FIXED = ('r', 'row_block', 'row_blocks', 'indices')
#: regularisation that acts on a structured unit's input / output (training only)
_REGULARISATION = ('dropout', 'drop_path')


class _SPT(PeftMethod):
    """Shared by SPT-LoRA / SPT-Adapter.

    Args:
        allocation (str | Allocation): ``allocation.json`` written by ``spt_sensitivity.py`` (or
            its directory), or an :class:`Allocation`.
        **options: options of the structured units (LoRA: ``alpha``, ``dropout``, ``drop_path``;
            Adapter: ``act``, ``scale``). The rank and the q/k/v blocks come from the allocation
            (the budget was met with them).

    LoRA regularisation as the official SPT-LoRA (``dropout=0.1, drop_path=0.1`` in our configs):
    dropout on the LoRA input, except on the attention output projection (the official code feeds
    its LoRA the undropped input), and per-sample drop-path on the LoRA output. Where a LoRA's
    input is never seen by a hook (mmseg ViT: ``nn.MultiheadAttention`` computes its fused
    in-projection and ``out_proj`` inside), neither can apply: those LoRAs train without, and a
    warning lists them.
    """
    kind = None
    structured_unit = None

    accepts_targets = False
    fixed_options = _FIXED

    def __init__(self, allocation, targets=None, **options):
        if targets is not None:
            raise ValueError(f'{type(self).__name__} tunes where its allocation says; it takes no '
                             f'targets (compute another allocation instead)')
        if 'r' in options:
            raise ValueError(f'{type(self).__name__}: the rank is fixed by the allocation '
                             f'(the budget was met with it); pass --rank to spt_sensitivity.py')
        fixed = sorted(set(options) & set(_FIXED))
        if fixed:
            raise ValueError(f'{type(self).__name__}: {", ".join(fixed)} are fixed by the '
                             f'allocation (its q/k/v blocks and sparse indices); compute another '
                             f'allocation instead')
        super().__init__(targets=None, **options)
        self.allocation_arg = allocation
        self.allocation = (allocation if isinstance(allocation, Allocation)
                           else Allocation.load(allocation))
        if self.allocation.kind != self.kind:
            raise ValueError(f'{type(self).__name__} needs a {self.kind!r} allocation, but '
                             f'{self.allocation.path or "the allocation"} was made for '
                             f'{self.allocation.kind!r} (SPT{self.allocation.kind.capitalize()})')

    def build_units(self, backbone: nn.Module) -> List[PeftUnit]:
        alloc = self.allocation
        alloc.check_backbone(backbone)
        modules = dict(backbone.named_modules())
        units, unregularised = [], []
        spec = self.structured_unit.option_spec
        for key in alloc.structured:
            name, block = split_block(key)
            opts = {k: v for k, v in self.options.items() if k in spec}
            opts['r'] = alloc.rank
            if block is not None:
                opts.update(row_block=block, row_blocks=len(QKV_BLOCKS))
            if self.table.role_of(name) == 'proj':
                opts.pop('dropout', None)  # official: the projection's LoRA sees undropped input
            if needs_reparam(host_of(backbone, name), modules[name]):
                dropped = [k for k in _REGULARISATION if opts.pop(k, None)]
                if dropped:
                    unregularised.append(key)
            units.append(self.structured_unit(self, backbone, name, modules[name],
                                              self.table.role_of(name), False, **opts))
        if unregularised:
            print_log(f'{type(self).__name__}: no dropout / drop-path on the LoRAs of '
                      f'{", ".join(unregularised)}: their input is never seen by a hook '
                      f'(computed inside nn.MultiheadAttention)', logger='current',
                      level=logging.WARNING)
        by_module = defaultdict(dict)
        for param_name, index in alloc.tuned_indices().items():
            owner, _, leaf = param_name.rpartition('.')
            by_module[owner][leaf] = index
        for name, indices in by_module.items():
            units.append(SparseDeltaUnit(self, backbone, name, modules[name],
                                         self.table.role_of(name), False, indices=indices))
        return units

    def cls_token(self):
        """Name of the class token this allocation trains, or None."""
        return self.allocation.cls_token['param'] if self.allocation.cls_token else None

    def trainable_names(self, backbone: nn.Module) -> List[str]:
        names = super().trainable_names(backbone)
        return names + [self.cls_token()] if self.cls_token() else names

    def no_weight_decay(self) -> List[str]:
        """The units' decay-free tensors, and the class token (as timm / the official code)."""
        names = super().no_weight_decay()
        return names + [self.cls_token()] if self.cls_token() else names

    def describe(self) -> dict:
        return dict(type=type(self).__name__,
                    allocation=self.allocation.path or '<in memory>',
                    **{k: v for k, v in self.options.items()
                       if isinstance(v, (int, float, str, bool, type(None)))})

    def checkpoint_meta(self) -> dict:
        """The allocation in plain types, for the merged checkpoint's meta."""
        summary = self.allocation.summary()
        summary.pop('sensitive_counts')
        summary['backbone'] = {k: v for k, v in summary['backbone'].items() if k != 'param_shapes'}
        summary['path'] = self.allocation.path
        return summary


@PEFT_METHODS.register_module()
class SPTLoRA(_SPT):
    """SPT with LoRA on the sensitive weight matrices and sparse deltas elsewhere; merges exactly
    (deltas scattered into the weights, LoRA folded)."""
    kind = 'lora'
    structured_unit = LoRAUnit
    unit_classes = (LoRAUnit, SparseDeltaUnit)
    card = MethodCard(zoo='spt-lora', folder='spt', suites=('vtab1k', 'fgvc'), label='SPT-LoRA',
                      count='the budget its allocation met (He et al. 2023; allocation.json)')


@PEFT_METHODS.register_module()
class SPTAdapter(_SPT):
    """SPT with Adapters after the sensitive weight matrices and sparse deltas elsewhere. Not
    mergeable (the adapters' bottleneck is non-linear)."""
    kind = 'adapter'
    structured_unit = AdapterUnit
    unit_classes = (AdapterUnit, SparseDeltaUnit)
    card = MethodCard(zoo='spt-adapter', folder='spt', suites=('vtab1k', 'fgvc'),
                      label='SPT-Adapter',
                      count='the budget its allocation met (He et al. 2023; allocation.json)')
    mergeable = False

    def not_mergeable_reason(self):
        return ('SPTAdapter cannot be merged into the stock backbone: its adapters are non-linear '
                'bottlenecks with no stock weight (use SPTLoRA for a mergeable SPT); export the '
                'PEFT-only state dict instead')
