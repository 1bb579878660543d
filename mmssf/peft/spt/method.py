"""SPT-LoRA and SPT-Adapter: tune where an allocation file says (He et al., "Sensitivity-Aware
Visual Parameter-Efficient Fine-Tuning", ICCV 2023).

Structured modules (LoRA-r / Adapter-r) go on the weight matrices the allocation marks
structured; sparse deltas on every other selected entry. Build the allocation for a config with
``tools/analysis_tools/spt_sensitivity.py``; then::

    peft=dict(type='SPTLoRA', allocation='work_dirs/spt/allocation.json')
"""
from collections import defaultdict
from typing import List

from torch import nn

from ...registry import PEFT_METHODS
from ..adapter import AdapterUnit
from ..base import PeftMethod, PeftUnit
from ..lora import LoRAUnit
from .allocation import Allocation
from .sparse_delta import SparseDeltaUnit


class _SPT(PeftMethod):
    """Shared by SPT-LoRA / SPT-Adapter.

    Args:
        allocation (str | Allocation): ``allocation.json`` written by ``spt_sensitivity.py`` (or
            its directory), or an :class:`Allocation`.
        **options: options of the structured units (LoRA: ``alpha``, ``dropout``; Adapter:
            ``act``, ``scale``). The rank comes from the allocation (the budget was met with it).
    """
    kind = None
    structured_unit = None

    accepts_targets = False

    def __init__(self, allocation, targets=None, **options):
        if targets is not None:
            raise ValueError(f'{type(self).__name__} tunes where its allocation says; it takes no '
                             f'targets (compute another allocation instead)')
        if 'r' in options:
            raise ValueError(f'{type(self).__name__}: the rank is fixed by the allocation '
                             f'(the budget was met with it); pass --rank to spt_sensitivity.py')
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
        units = []
        spec = self.structured_unit.option_spec
        for name in alloc.structured:
            units.append(self.structured_unit(
                self, backbone, name, modules[name], self.table.role_of(name), False,
                **{k: v for k, v in {**self.options, 'r': alloc.rank}.items() if k in spec}))
        by_module = defaultdict(dict)
        for param_name, index in alloc.unstructured.items():
            owner, _, leaf = param_name.rpartition('.')
            by_module[owner][leaf] = index
        for name, indices in by_module.items():
            units.append(SparseDeltaUnit(self, backbone, name, modules[name],
                                         self.table.role_of(name), False, indices=indices))
        return units

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


@PEFT_METHODS.register_module()
class SPTAdapter(_SPT):
    """SPT with Adapters after the sensitive weight matrices and sparse deltas elsewhere. Not
    mergeable (the adapters' bottleneck is non-linear)."""
    kind = 'adapter'
    structured_unit = AdapterUnit
    unit_classes = (AdapterUnit, SparseDeltaUnit)
    mergeable = False

    def not_mergeable_reason(self):
        return ('SPTAdapter cannot be merged into the stock backbone: its adapters are non-linear '
                'bottlenecks with no stock weight (use SPTLoRA for a mergeable SPT); export the '
                'PEFT-only state dict instead')
