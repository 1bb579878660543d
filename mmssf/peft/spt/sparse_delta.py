"""Unstructured tuning: a trainable delta on selected entries of frozen parameters.

The effective parameter is ``W.flatten().index_add(0, idx, delta)`` — computed when the host
module runs (weight transform, see :mod:`mmssf.peft.hooks`). Backward costs O(K) for K selected
entries (``grad_delta = grad_W_eff.flatten()[idx]``) plus the one dense gradient of the effective
weight that any Linear backward produces anyway; no K × K intermediate (the official SPT code
builds one). Indices are buffers, so they travel with the PEFT-only state.
"""
from typing import Dict

import torch

from ..base import PeftUnit


def scatter_delta(weight: torch.Tensor, index: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``weight`` with ``delta`` added at the flat positions ``index`` (out of place)."""
    return weight.reshape(-1).index_add(0, index, delta.to(weight.dtype)).view_as(weight)


class SparseDeltaUnit(PeftUnit):
    """Deltas on selected entries of some parameters of one module.

    Options: ``indices`` — ``{parameter leaf name: flat int64 indices}``.
    """

    def attach(self):
        indices: Dict[str, torch.Tensor] = self.options['indices']
        self.leaves = []
        for leaf, index in indices.items():
            param = getattr(self.module, leaf)
            index = index.to(torch.long)
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= param.numel()):
                raise ValueError(f'SPT indices for {self.name}.{leaf} fall outside its '
                                 f'{param.numel()} entries')
            self.add_buffer(f'spt_index_{leaf}', index.clone())
            self.add_parameter(f'spt_delta_{leaf}', torch.zeros(index.numel(), dtype=param.dtype))
            self.add_weight_transform(f'spt_{leaf}', (leaf, ), self._transform(leaf))
            self.leaves.append(leaf)

    def _transform(self, leaf):
        def fn(module, params):
            return {leaf: scatter_delta(params[leaf], getattr(module, f'spt_index_{leaf}'),
                                        getattr(module, f'spt_delta_{leaf}'))}
        return fn

    def merge(self):
        for leaf in self.leaves:
            param = getattr(self.module, leaf)
            index = getattr(self.module, f'spt_index_{leaf}')
            delta = getattr(self.module, f'spt_delta_{leaf}')
            param.copy_(scatter_delta(param, index, delta))
