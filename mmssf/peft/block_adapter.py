"""Adapters that attach to whole blocks of the token map (AdaptFormer, Adapter+, Mona): the sites
where a block adapter reads and writes the token stream, and the method base that targets every
block by default and refuses targets that are not blocks."""
import re

import torch

from .base import PeftMethod, PeftUnit
from .targets import token_map

#: where an adapter of a block reads and writes the token stream
SITES = ('parallel', 'branch', 'post')


class BlockAdapterUnit(PeftUnit):
    """A bottleneck adapter at one site of a block's MLP sub-layer.

    Sites: ``'parallel'`` (reads the stream entering the MLP sub-layer, adds to the MLP branch),
    ``'branch'`` (reads the MLP branch's term, adds to it: a sequential adapter), ``'post'``
    (reads the block's output, adds to it). Subclasses map their ``position`` option to a site
    (:attr:`positions`) and define :meth:`build` (the tensors, for width ``dim``) and
    :meth:`increment` (the adapter's term for its input ``h``).
    """
    mergeable = False
    #: position option value -> site
    positions = {}

    def attach(self):
        facts = token_map(self.method.table)
        block = self.module
        norm = getattr(block, facts.norm)
        self.dim = norm.normalized_shape[-1]
        self.block_norm_eps = norm.eps
        self.build(self.dim)
        self.site = self.positions[self.opts.position]
        self._stream = None
        if self.site == 'post':
            self.handles.append(block.register_forward_hook(self._add_to_own_output))
            return
        branch = block.get_submodule(facts.mlp_branch)
        if self.site == 'branch':
            self.handles.append(branch.register_forward_hook(self._add_to_own_output))
            return
        self.handles.append(norm.register_forward_pre_hook(self._keep_stream))
        self.handles.append(branch.register_forward_hook(self._add_parallel))

    def build(self, dim: int) -> None:
        raise NotImplementedError

    def increment(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def param(self, name: str):
        """One of this unit's tensors by its name without the prefix (None when absent)."""
        return self.module._parameters.get(self.prefixes[0] + name)

    def _add_to_own_output(self, module, args, out):
        if not isinstance(out, torch.Tensor):
            raise RuntimeError(f'{type(self.method).__name__} on {self.name}: '
                               f'{type(module).__name__} returned {type(out).__name__}, not the '
                               f'token tensor mmssf expects')
        return out + self.increment(out)

    def _keep_stream(self, module, args):
        self._stream = args[0]

    def _add_parallel(self, module, args, out):
        stream, self._stream = self._stream, None
        if stream is None:
            raise RuntimeError(f'{type(self.method).__name__} on {self.name}: the MLP branch ran '
                               f'before the norm that starts it; the block does not have the '
                               f'structure mmssf expects')
        return out + self.increment(stream)

    def merge_blocker(self):
        return (f'{type(self.method).__name__} on {self.name} cannot be merged: its adapter is '
                f'non-linear and has no stock weight; export the PEFT-only state dict instead')


class BlockAdapterMethod(PeftMethod):
    """A method whose units are whole blocks (default: every block of the token map)."""
    mergeable = False

    def target_specs(self):
        if self.targets is None:
            return [(token_map(self.table).blocks, {}, True)]
        return super().target_specs()

    def build_units(self, backbone):
        units = super().build_units(backbone)
        blocks = token_map(self.table).blocks
        wrong = [u.name for u in units if not re.fullmatch(blocks, u.name)]
        if wrong:
            raise ValueError(f'{type(self).__name__} attaches to whole blocks ({blocks!r} in '
                             f'{self.table.name}); these targets are not blocks: {wrong}')
        return units

    def not_mergeable_reason(self):
        return (f'{type(self).__name__} cannot be merged into the stock backbone: its adapters '
                f'are non-linear and have no stock weight; export the PEFT-only state dict instead')
