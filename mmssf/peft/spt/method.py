"""SPT-LoRA and SPT-Adapter: tune where an allocation file says (He et al., "Sensitivity-Aware
Visual Parameter-Efficient Fine-Tuning", ICCV 2023).

Structured modules (LoRA-r / Adapter-r) go on the weight matrices (or q/k/v row blocks of a
fused projection) the allocation marks structured; sparse deltas on every other selected entry and
on the vectors tuned whole (all their entries); the class token trains as a stock parameter when
the allocation counts it. Build the allocation for a config with
``tools/analysis_tools/spt_sensitivity.py``; then::

    peft=dict(type='SPTLoRA', allocation='work_dirs/spt/allocation.json')

The structured modules compute the official ziplab/SPT blocks (``BlockSPTParallel`` for LoRA,
``BlockSPTSeq`` for Adapter) and train with their regularisation by default (the official
``--no_structured_drop_out`` / ``--no_structured_drop_path`` are off in every official script):
Dropout(0.1) on the module's input — never on the attention projection's — and DropPath(0.1) on
its output.
"""
import dataclasses
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
from ..options import OptionError
from .allocation import QKV_BLOCKS, Allocation, split_block
from .shared_dropout import SharedDropout
from .sparse_delta import SparseDeltaUnit

#: options of the units that the allocation fixes (the structured units' rank and q/k/v blocks,
#: the sparse deltas' indices)
_FIXED = ('r', 'row_block', 'row_blocks', 'indices')
#: regularisation that acts on a structured unit's input / output (training only)
_REGULARISATION = ('dropout', 'drop_path')
#: the official structured-module regularisation (ziplab/SPT ``StructuredTuningModule``:
#: DropPath(0.1); the blocks' ``structured_drop``: Dropout(0.1))
_OFFICIAL_REGULARISATION = dict(dropout=0.1, drop_path=0.1)


class _SPT(PeftMethod):
    """Shared by SPT-LoRA / SPT-Adapter.

    Args:
        allocation (str | Allocation): ``allocation.json`` written by ``spt_sensitivity.py`` (or
            its directory), or an :class:`Allocation`.
        **options: options of the structured units (LoRA: ``alpha``, ``dropout``, ``drop_path``;
            Adapter: ``act``, ``scale``, ``dropout``, ``drop_path``, ``down_bias_init``). The rank
            and the q/k/v blocks come from the allocation (the budget was met with them).

    Regularisation as the official code, by default (``dropout=0.1, drop_path=0.1``; 0 turns
    either off): dropout on the structured module's input, except on the attention output
    projection's (the official code feeds its module the undropped input), and per-sample
    drop-path on the module's output. Where a LoRA's input is never seen by a hook (mmseg ViT:
    ``nn.MultiheadAttention`` computes its fused in-projection and ``out_proj`` inside), neither
    can apply: those LoRAs train without, and a warning lists them (set both to 0 to silence it).
    """
    kind = None
    structured_unit = None
    #: the structured units' defaults where they differ from the unit's own (the official code's)
    unit_defaults = dict(_OFFICIAL_REGULARISATION)

    accepts_targets = False
    fixed_options = _FIXED

    def __init__(self, allocation, targets=None, **options):
        if targets is not None:
            raise ValueError(f'{type(self).__name__} tunes where its allocation says; it takes no '
                             f'targets (compute another allocation instead)')
        if 'r' in options:
            raise ValueError(f'{type(self).__name__}: the rank is fixed by the allocation '
                             f'(the budget was met with it); pass --rank to spt_sensitivity.py')
        if 'parallel' in options and 'parallel' in self.fixed_options:
            raise ValueError(f'{type(self).__name__}: parallel is fixed by the official placement '
                             f'(parallel on the attention projection, sequential elsewhere)')
        fixed = sorted(set(options) & set(self.fixed_options))
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
            role = self.table.role_of(name)
            opts = {k: v for k, v in self.unit_defaults.items() if k in spec}
            opts.update({k: v for k, v in self.options.items() if k in spec})
            opts.update(self.placement(role))
            opts['r'] = alloc.rank
            if block is not None:
                opts.update(row_block=block, row_blocks=len(QKV_BLOCKS))
            if role == 'proj':
                opts.pop('dropout', None)  # official: the projection's module sees undropped input
            if needs_reparam(host_of(backbone, name), modules[name]):
                dropped = [k for k in _REGULARISATION if opts.pop(k, None)]
                if dropped:
                    unregularised.append(key)
            units.append(self.structured_unit(self, backbone, name, modules[name], role, False,
                                              **opts))
        self.group_units(units)
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

    @classmethod
    def unit_option_specs(cls):
        """The advertised unit options, with the official defaults this method gives them."""
        specs = super().unit_option_specs()
        return {name: (dataclasses.replace(spec, default=cls.unit_defaults[name])
                       if name in cls.unit_defaults else spec) for name, spec in specs.items()}

    def placement(self, role) -> dict:
        """Unit options that place the structured module on a matrix of ``role`` (the official
        blocks' choice, not the user's)."""
        return {}

    def group_units(self, units) -> None:
        """Hook: coordinate the structured units of one block (SPT-LoRA's shared dropout)."""

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
    (deltas scattered into the weights, LoRA folded). The official ``BlockSPTParallel``:
    ``W x + B A drop(x)`` on q, k, v, fc1, fc2 and ``W h + B A h`` on the attention projection.

    Args:
        allocation: see :class:`_SPT`.
        shared_qkv_dropout (bool): the q, k and v LoRAs of one attention see one dropout draw of
            their common input, as the official ``AttentionSPTParallel`` (``x_drop`` computed
            once); False draws one mask per LoRA. Default True.
    """
    kind = 'lora'
    structured_unit = LoRAUnit
    unit_classes = (LoRAUnit, SparseDeltaUnit)
    card = MethodCard(zoo='spt-lora', folder='spt', suites=('vtab1k', 'fgvc'), label='SPT-LoRA',
                      count='the budget its allocation met (He et al. 2023; allocation.json)')

    def __init__(self, allocation, targets=None, shared_qkv_dropout=True, **options):
        if not isinstance(shared_qkv_dropout, bool):
            raise OptionError(f'SPTLoRA: option shared_qkv_dropout={shared_qkv_dropout!r} must be '
                              f'True or False')
        super().__init__(allocation, targets=targets, **options)
        self.shared_qkv_dropout = shared_qkv_dropout

    def group_units(self, units) -> None:
        """One :class:`SharedDropout` per attention for its q / k / v LoRAs (the fused qkv's
        three row blocks, or three separate Linears: the same parent module)."""
        if not self.shared_qkv_dropout:
            return
        groups = defaultdict(list)
        for unit in units:
            if unit.role == 'qkv' and unit.options.get('dropout') and not unit.reparam:
                groups[unit.name.rpartition('.')[0]].append(unit)
        for members in groups.values():
            if len(members) > 1:
                shared = SharedDropout(len(members))
                for unit in members:
                    unit.input_dropout = shared

    def describe(self) -> dict:
        return dict(super().describe(), shared_qkv_dropout=self.shared_qkv_dropout)


@PEFT_METHODS.register_module()
class SPTAdapter(_SPT):
    """SPT with Adapters on the sensitive weight matrices and sparse deltas elsewhere. Not
    mergeable (the adapters' bottleneck is non-linear). The official ``BlockSPTSeq``: on q, k, v,
    fc1, fc2 sequential, ``y + A(drop(y))`` with ``y`` the Linear's output; on the attention
    projection parallel, ``proj(h) + A(h)`` from the projection's input. ``A`` is
    ``up(GELU(down(·)))`` with the official init: down kaiming-uniform with PyTorch's default
    bias init (``down_bias_init='linear'``), up zero; DropPath(0.1) on its output."""
    kind = 'adapter'
    structured_unit = AdapterUnit
    unit_classes = (AdapterUnit, SparseDeltaUnit)
    unit_defaults = dict(_OFFICIAL_REGULARISATION, down_bias_init='linear')
    fixed_options = _FIXED + ('parallel', )
    card = MethodCard(zoo='spt-adapter', folder='spt', suites=('vtab1k', 'fgvc'),
                      label='SPT-Adapter',
                      count='the budget its allocation met (He et al. 2023; allocation.json)')
    mergeable = False

    def placement(self, role) -> dict:
        # official AttentionSPTSeq: x = proj(x) + structured_proj(x) (parallel, undropped input)
        return dict(parallel=role == 'proj')

    def not_mergeable_reason(self):
        return ('SPTAdapter cannot be merged into the stock backbone: its adapters are non-linear '
                'bottlenecks with no stock weight (use SPTLoRA for a mergeable SPT); export the '
                'PEFT-only state dict instead')
