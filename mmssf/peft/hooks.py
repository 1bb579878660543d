"""How a unit reaches into a stock module without renaming or replacing it.

Three mechanisms, all removable without trace (merge / unapply leave the stock module):

* forward hooks (``module.register_forward_pre_hook`` / ``register_forward_hook``) for methods
  that act on a module's input or output (SSF after a Linear / norm, LoRA, Adapter, VPT's prompt
  tokens around blocks, patch merging and norms);
* weight transforms for methods that re-parameterize a weight (RLRR, sparse deltas), and for
  modules whose output cannot be hooked: ``nn.MultiheadAttention``'s fused in-projection is no
  submodule, and its ``out_proj`` is applied functionally (``F.linear(x, out_proj.weight, ...)``),
  so hooks on it never fire. Before the *host*'s forward (the module that is actually called) the
  owner's parameters are swapped for the effective tensors; afterwards the originals go back;
* forward replacement (:func:`replace_forward`), the last resort for a computation that neither
  hooks nor weights can express (VPT's window attention over extra prompt tokens, which need their
  own rows / columns of the relative-position bias and mask). The module keeps its class, its
  parameters and its hooks; only what its call computes changes, and the replacement receives
  the stock forward to fall back on. ``handle.remove()`` restores the stock forward.
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


def _plain_linear_forwards():
    forwards = {nn.Linear.forward}
    try:  # mmcv's Linear (mmseg's FFN) only adds an empty-input branch for torch < 1.6
        from mmcv.cnn.bricks.wrappers import Linear as MMCVLinear
        forwards.add(MMCVLinear.forward)
    except ImportError:
        pass
    return forwards


_PLAIN_LINEAR_FORWARDS = _plain_linear_forwards()


def is_plain_linear(module: nn.Module) -> bool:
    """True for a Linear that computes ``F.linear(x, weight, bias)`` and nothing else (its forward
    may then be replaced by an equivalent lean op)."""
    return (isinstance(module, nn.Linear) and type(module).forward in _PLAIN_LINEAR_FORWARDS
            and 'forward' not in module.__dict__)


def host_of(backbone: nn.Module, name: str) -> nn.Module:
    """The module whose call runs ``name``'s computation (itself, unless applied functionally)."""
    modules = dict(backbone.named_modules())
    parent_name, _, leaf = name.rpartition('.')
    parent = modules.get(parent_name)
    if isinstance(parent, nn.MultiheadAttention) and leaf == 'out_proj':
        return parent
    return modules[name]


def needs_reparam(host: nn.Module, module: nn.Module) -> bool:
    """True when ``module``'s output cannot be hooked and must be re-parameterized instead."""
    return host is not module or isinstance(module, nn.MultiheadAttention)


class _WeightSwap:
    """One per host module: composes every registered transform into effective parameters."""

    def __init__(self, host: nn.Module):
        self.transforms = {}  # (id(owner), key) -> (owner, names, fn)
        self.saved = []
        self.handles = [
            host.register_forward_pre_hook(self.swap_in),
            host.register_forward_hook(self.swap_out, always_call=True),
        ]

    def swap_in(self, host, args):
        effective = {}  # id(owner) -> (owner, {name: tensor})
        for owner, names, fn in self.transforms.values():
            _, params = effective.setdefault(id(owner), (owner, {}))
            params.update(fn(owner, {k: params.get(k, getattr(owner, k)) for k in names}))
        for owner, params in effective.values():
            self.saved.append((owner, {k: owner._parameters[k] for k in params}))
            owner._parameters.update(params)

    def swap_out(self, host, args, output):
        for owner, originals in self.saved:
            owner._parameters.update(originals)
        self.saved = []


def add_weight_transform(host: nn.Module, owner: nn.Module, key: str, names, fn: WeightFn):
    """Make ``fn(owner, {name: tensor}) -> {name: tensor}`` re-parameterize ``owner``'s ``names``
    whenever ``host`` runs."""
    swap = host.__dict__.get(_SWAP_ATTR)
    if swap is None:
        swap = _WeightSwap(host)
        host.__dict__[_SWAP_ATTR] = swap
    swap.transforms[(id(owner), key)] = (owner, tuple(names), fn)


def remove_weight_transform(host: nn.Module, owner: nn.Module, key: str) -> None:
    swap = host.__dict__.get(_SWAP_ATTR)
    if swap is None:
        return
    swap.transforms.pop((id(owner), key), None)
    if not swap.transforms:
        for h in swap.handles:
            h.remove()
        del host.__dict__[_SWAP_ATTR]


# -- forward replacement ------------------------------------------------------------------------
ForwardFn = Callable[..., object]


class _ReplacedForward:
    """Stands in ``module.__dict__['forward']``: ``module(...)`` still runs every hook, then this.

    A plain object (not a closure) so that ``copy.deepcopy`` of the model (EMA hooks) copies the
    replacement with the module and the unit whose bound method ``fn`` usually is.
    """

    def __init__(self, module: nn.Module, fn: ForwardFn, previous):
        self.module, self.fn, self.previous = module, fn, previous

    def stock_forward(self, *args, **kwargs):
        if self.previous is not None:
            return self.previous(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self.fn(self.module, self.stock_forward, *args, **kwargs)


class ForwardHandle:
    """Returned by :func:`replace_forward`; ``remove()`` restores the forward it replaced."""

    def __init__(self, replacement: _ReplacedForward):
        self.replacement = replacement

    def remove(self):
        rep = self.replacement
        if rep is None:
            return
        if rep.module.__dict__.get('forward') is rep:
            if rep.previous is None:
                del rep.module.__dict__['forward']
            else:
                rep.module.__dict__['forward'] = rep.previous
        self.replacement = None


def replace_forward(module: nn.Module, fn: ForwardFn) -> ForwardHandle:
    """Make ``module(*args, **kwargs)`` compute ``fn(module, stock_forward, *args, **kwargs)``.

    ``stock_forward(*args, **kwargs)`` is the forward being replaced (the class's, or an instance
    forward set before), so ``fn`` can fall back to it. Pre- and post-hooks of ``module`` keep
    running around ``fn``. One replacement per module: a second one raises ``ValueError`` (two
    methods or two targets reach the same module).
    """
    current = module.__dict__.get('forward')
    if isinstance(current, _ReplacedForward):
        raise ValueError(f'{type(module).__name__} already has a replaced forward: two methods or '
                         f'two targets reach the same module')
    replacement = _ReplacedForward(module, fn, current)
    module.__dict__['forward'] = replacement
    return ForwardHandle(replacement)
