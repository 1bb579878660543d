"""How a unit reaches into a stock module without renaming or replacing it.

Two mechanisms, both removable without trace (merge leaves the stock module):

* output hooks (``module.register_forward_hook``) for methods that act on a module's output
  (SSF after a Linear / norm, LoRA and Adapter);
* weight transforms for methods that re-parameterize a weight (RLRR, sparse deltas, anything on
  ``nn.MultiheadAttention``'s fused in-projection, which is no submodule): before the forward the
  module's parameter is swapped for the effective tensor, afterwards the original is put back.
"""
from typing import Callable, Dict

import torch
from torch import nn

WeightFn = Callable[[nn.Module, Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]
_SWAP_ATTR = '_mmssf_weight_swap'


def weight_and_bias_names(module: nn.Module):
    """Names of the weight / bias that produce ``module``'s output (fused in-proj for MHA)."""
    if isinstance(module, nn.MultiheadAttention):
        if not module._qkv_same_embed_dim:
            raise TypeError('nn.MultiheadAttention with separate q/k/v projections is not supported')
        return 'in_proj_weight', 'in_proj_bias'
    return 'weight', 'bias'


class _WeightSwap:
    """One per module: composes every registered transform into the effective parameters."""

    def __init__(self, module: nn.Module):
        self.transforms = {}
        self.saved = None
        self.handles = [
            module.register_forward_pre_hook(self.swap_in),
            module.register_forward_hook(self.swap_out, always_call=True),
        ]

    def effective(self, module: nn.Module) -> Dict[str, torch.Tensor]:
        params = {}
        for fn in self.transforms.values():
            current = {k: params.get(k, getattr(module, k)) for k in fn.names}
            params.update(fn(module, current))
        return params

    def swap_in(self, module, args):
        params = self.effective(module)
        self.saved = {k: module._parameters[k] for k in params}
        module._parameters.update(params)

    def swap_out(self, module, args, output):
        if self.saved is not None:
            module._parameters.update(self.saved)
            self.saved = None


def add_weight_transform(module: nn.Module, key: str, names, fn) -> None:
    """Make ``fn(module, {name: tensor}) -> {name: tensor}`` re-parameterize ``module``'s ``names``."""
    swap = module.__dict__.get(_SWAP_ATTR)
    if swap is None:
        swap = _WeightSwap(module)
        module.__dict__[_SWAP_ATTR] = swap
    fn.names = tuple(names)
    swap.transforms[key] = fn


def remove_weight_transform(module: nn.Module, key: str) -> None:
    swap = module.__dict__.get(_SWAP_ATTR)
    if swap is None:
        return
    swap.transforms.pop(key, None)
    if not swap.transforms:
        for h in swap.handles:
            h.remove()
        del module.__dict__[_SWAP_ATTR]
