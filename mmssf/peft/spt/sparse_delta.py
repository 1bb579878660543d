"""Unstructured tuning: a trainable delta on selected entries of frozen parameters.

Two ways to apply ``W' = W + scatter(delta)``, chosen per parameter, both O(K) in the K selected
entries (no K × K intermediate, which the official SPT code builds):

* the weight of a Linear whose output can be hooked: the frozen Linear runs as is and a sparse
  correction ``y[..., i_k] += delta_k · x[..., j_k]`` is added to its output
  (:class:`_SparseLinearDelta`). No effective weight is materialised, no dense weight gradient is
  computed; backward gathers ``g[..., i_k] · x[..., j_k]``. It keeps only ``x`` for backward.
* anything else (biases, norms, the fused attention in-projection and its functionally applied
  ``out_proj``): ``W.flatten().index_add(0, idx, delta)`` as a weight transform when the host
  module runs; backward gathers the effective parameter's gradient at ``idx``.

Indices are buffers (flat positions), so they travel with the PEFT-only state.
"""
from typing import Dict

import torch
from torch import nn

from ..base import PeftUnit
from ..options import Option


def scatter_delta(weight: torch.Tensor, index: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``weight`` with ``delta`` added at the flat positions ``index`` (out of place)."""
    return weight.reshape(-1).index_add(0, index, delta.to(weight.dtype)).view_as(weight)


class _SparseLinearDelta(torch.autograd.Function):
    """``out`` of a frozen Linear plus ``delta_k · x[..., cols_k]`` added at ``out[..., rows_k]``."""

    @staticmethod
    def forward(ctx, out, x, delta, rows, cols):
        ctx.save_for_backward(x, delta, rows, cols)
        # (under autocast the Linear's output may be in a lower precision than its input)
        return out.index_add(-1, rows, (x.index_select(-1, cols) * delta.to(x.dtype)).to(out.dtype))

    @staticmethod
    def backward(ctx, grad):
        x, delta, rows, cols = ctx.saved_tensors
        grad_rows = grad.index_select(-1, rows)
        grad_x = grad_delta = None
        if ctx.needs_input_grad[1]:
            grad_x = torch.zeros_like(x).index_add_(-1, cols, (grad_rows * delta).to(x.dtype))
        if ctx.needs_input_grad[2]:
            grad_delta = (grad_rows.to(x.dtype) * x.index_select(-1, cols)).reshape(-1, len(rows)).sum(0)
            grad_delta = grad_delta.to(delta.dtype)
        return grad, grad_x, grad_delta, None, None


def sparse_linear_delta(out, x, delta, index, in_features):
    """Linear output ``out = x Wᵀ + b`` turned into ``x (W + scatter(delta))ᵀ + b``."""
    return _SparseLinearDelta.apply(out, x, delta, index // in_features, index % in_features)


class SparseDeltaUnit(PeftUnit):
    """Deltas on selected entries of some parameters of one module."""
    option_spec = dict(indices=Option(None, dict, doc='{parameter leaf name: flat int64 indices} '
                                      '(set by the SPT allocation)'))
    prefixes = ('spt_', )
    no_decay = ('spt_delta', )

    def attach(self):
        indices: Dict[str, torch.Tensor] = self.opts.indices
        if not indices:
            raise ValueError(f'SparseDeltaUnit on {self.name} needs indices (from an SPT allocation)')
        self.leaves = []
        for leaf, index in indices.items():
            param = getattr(self.module, leaf)
            index = index.to(torch.long)
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= param.numel()):
                raise ValueError(f'SPT indices for {self.name}.{leaf} fall outside its '
                                 f'{param.numel()} entries')
            self.add_buffer(f'spt_index_{leaf}', index.clone())
            self.add_parameter(f'spt_delta_{leaf}', torch.zeros(index.numel(), dtype=param.dtype))
            if leaf == 'weight' and isinstance(self.module, nn.Linear) and not self.reparam:
                self.handles.append(self.module.register_forward_hook(self._linear_hook))
            else:
                self.add_weight_transform(f'spt_{leaf}', (leaf, ), self._transform(leaf))
            self.leaves.append(leaf)

    def _linear_hook(self, module, args, out):
        return sparse_linear_delta(out, args[0], module.spt_delta_weight, module.spt_index_weight,
                                   module.in_features)

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
