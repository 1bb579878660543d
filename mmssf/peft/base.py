"""The contract every tuning method obeys.

``method.apply(backbone)`` attaches the method's units to the modules its targets name, then
freezes every backbone parameter except the method's own. After training:

* ``method.peft_state_dict(backbone)`` — only the tuned tensors (and the buffers they need);
* ``method.load_peft_state_dict(backbone, sd)`` — the inverse, strict about keys;
* ``method.merge(backbone)`` — folds the tuning into the stock parameters and removes every hook
  and extra parameter, leaving the stock class with exactly the stock state-dict keys and shapes;
  methods that change the computation (VPT, Adapter) raise :class:`MergeError` instead.

A method knows nothing of a particular backbone: it names *roles* (``qkv``, ``fc1`` ...) that the
target tables in :mod:`mmssf.peft.targets` resolve, or user patterns (regex or name suffix).

A method's facts are declared once, on its unit classes, and everything else reads them from the
registry (:mod:`mmssf.peft.registry_facts`): the options (:class:`~mmssf.peft.options.Option`
specs, validated when the method is built), the prefixes of the tensor names it adds, which of
them get no weight decay, whether a unit can merge (decided per unit when the method is applied,
so a placement that cannot merge is known before training), and for structured units the
parameter cost ``num_params(module, r)`` and ``can_wrap(module)`` that SPT's allocation uses.
"""
import copy
import inspect
import re
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .hooks import add_weight_transform, host_of, needs_reparam, remove_weight_transform
from .options import Option, OptionError, namespace, unknown_option_error, validate
from .targets import TargetTable, find_table, resolve_targets

_STATE_ATTR = '_mmssf_peft'


class MergeError(RuntimeError):
    """The tuned backbone cannot be folded into the stock one."""


class _TransformHandle:
    """Removes one weight transform, like a hook handle."""

    def __init__(self, host, owner, key):
        self.args = (host, owner, key)

    def remove(self):
        remove_weight_transform(*self.args)


class PeftUnit:
    """What one method attaches to one module.

    Subclasses create their tensors with :meth:`add_parameter` / :meth:`add_buffer` (registered on
    the tuned module, so they live under its name), hook the module in :meth:`attach` and fold
    themselves into the stock parameters in :meth:`merge`. Their facts are class attributes:
    """
    #: the unit's options (validated; read as ``self.opts.<name>``; ``self.options`` holds the values)
    option_spec: Dict[str, Option] = {}
    #: every tensor the unit adds is named with one of these prefixes (checked when added)
    prefixes: Tuple[str, ...] = ()
    #: tensors whose name starts with one of these prefixes get no weight decay
    no_decay: Tuple[str, ...] = ()
    #: whether the unit can fold into the stock parameters (see also :meth:`merge_blocker`)
    mergeable = True

    def __init__(self, method: 'PeftMethod', backbone: nn.Module, name: str, module: nn.Module,
                 role: Optional[str], from_default: bool, **options):
        self.method, self.backbone, self.name, self.module = method, backbone, name, module
        self.role, self.from_default = role, from_default
        self.options = validate(f'{type(method).__name__} on {name}', self.option_spec, options)
        self.opts = namespace(self.option_spec, self.options)
        self.param_names: List[str] = []
        self.buffer_names: List[str] = []
        self.handles = []
        self.host = host_of(backbone, name)
        self.reparam = needs_reparam(self.host, module)

    def add_weight_transform(self, key: str, names, fn) -> None:
        add_weight_transform(self.host, self.module, key, names, fn)
        self.handles.append(_TransformHandle(self.host, self.module, key))

    @classmethod
    def can_wrap(cls, module: nn.Module, host: Optional[nn.Module] = None) -> bool:
        """Whether this unit kind can be attached to ``module``, run by ``host`` (the module
        actually called, see :func:`~mmssf.peft.hooks.host_of`); structured kinds override."""
        return True

    @classmethod
    def num_params(cls, module: nn.Module, r: int) -> int:
        """Trainable parameters of one rank-``r`` unit on ``module`` (structured kinds)."""
        raise NotImplementedError(f'{cls.__name__} has no rank-based parameter cost')

    def merge_blocker(self) -> Optional[str]:
        """Why this unit cannot merge into the stock parameters, or None (known once attached)."""
        if self.mergeable:
            return None
        return f'{type(self).__name__} on {self.name} has no stock parameter to fold into'

    def _check_prefix(self, name: str) -> None:
        if not name.startswith(self.prefixes):
            raise AssertionError(f'{type(self).__name__} adds {name!r}, which has none of its '
                                 f'declared prefixes {self.prefixes}')

    def add_parameter(self, name: str, tensor: torch.Tensor) -> nn.Parameter:
        self._check_prefix(name)
        if name in self.module._parameters or name in self.module._buffers:
            raise ValueError(f'{self.name} is already tuned ({name!r} exists): two methods or two '
                             f'targets reach the same module')
        param = nn.Parameter(tensor)
        self.module.register_parameter(name, param)
        self.param_names.append(name)
        return param

    def add_buffer(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        self._check_prefix(name)
        self.module.register_buffer(name, tensor)
        self.buffer_names.append(name)
        return tensor

    def full_names(self, names) -> List[str]:
        return [f'{self.name}.{n}' for n in names]

    def attach(self) -> None:
        raise NotImplementedError

    def merge(self) -> None:
        raise MergeError(self.merge_blocker() or
                         f'{type(self.method).__name__} cannot be merged into the stock backbone')

    def detach(self) -> None:
        """Remove hooks, parameters and buffers this unit added."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        for name in self.param_names:
            del self.module._parameters[name]
        for name in self.buffer_names:
            del self.module._buffers[name]
        self.param_names, self.buffer_names = [], []


class PeftMethod:
    """Base class of tuning methods.

    Args:
        targets: where to tune. ``None`` uses the method's default roles. Otherwise a list of roles /
            patterns, or a dict ``{pattern: dict(option=value)}`` for per-target options. A pattern is
            a role of the backbone's target table, a regex fully matching module names, or a module
            name suffix. A user pattern that matches nothing raises ``ValueError`` listing the modules.
        **options: options of the method's units, shared by every target (per-target options
            override them); see the unit classes' ``option_spec``. Unknown names, wrong types and
            out-of-range values raise :class:`~mmssf.peft.options.OptionError`.
    """
    #: unit class attached to every matched module (methods with several kinds set
    #: ``unit_classes`` and override :meth:`unit_class`)
    unit_cls = None
    unit_classes: Tuple[type, ...] = ()
    #: roles tuned when ``targets`` is None
    default_targets: tuple = ()
    #: whether the method can merge into the stock backbone at all (units may still refuse)
    mergeable = True
    #: whether the method takes ``targets`` (baselines that tune fixed tensors do not)
    accepts_targets = True

    def __init__(self, targets=None, **options):
        name = type(self).__name__
        if targets is not None and not self.accepts_targets:
            raise unknown_option_error(name, 'targets', self.method_option_names())
        self.targets = targets
        self.options = self._validate_shared(options, name)
        for pattern, opts, _ in self.target_specs_from_arg():
            self._validate_shared(opts, f'{name} target {pattern!r}')
        self.units: List[PeftUnit] = []
        self.table: Optional[TargetTable] = None
        self.stock_shapes: Dict[str, torch.Size] = {}

    # -- facts from the unit classes ----------------------------------------------------------
    @classmethod
    def all_unit_classes(cls) -> Tuple[type, ...]:
        return tuple(cls.unit_classes) or ((cls.unit_cls, ) if cls.unit_cls is not None else ())

    @classmethod
    def unit_option_specs(cls) -> Dict[str, Option]:
        specs = {}
        for unit_cls in cls.all_unit_classes():
            for name, option in unit_cls.option_spec.items():
                specs.setdefault(name, option)
        return specs

    @classmethod
    def method_option_names(cls) -> List[str]:
        """Every option name the method takes (its units' and its own signature's)."""
        own = [p for p in inspect.signature(cls.__init__).parameters
               if p not in ('self', 'options', 'kwargs')]
        if not cls.accepts_targets and 'targets' in own:
            own.remove('targets')
        return sorted(set(own) | set(cls.unit_option_specs()))

    @classmethod
    def tensor_prefixes(cls) -> Tuple[str, ...]:
        """Name prefixes of every tensor the method adds."""
        return tuple(dict.fromkeys(p for u in cls.all_unit_classes() for p in u.prefixes))

    @classmethod
    def no_decay_prefixes(cls) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(p for u in cls.all_unit_classes() for p in u.no_decay))

    def _validate_shared(self, options, owner):
        """Each option must be known to at least one unit class and valid for every one that has
        it (the units validate again with their own spec when they are built)."""
        options = dict(options)
        for key, value in options.items():
            owners = [u for u in self.all_unit_classes() if key in u.option_spec]
            if not owners:
                raise unknown_option_error(owner, key, self.method_option_names())
            for unit_cls in owners:
                unit_cls.option_spec[key].check(owner, key, value)
        return options

    # -- building ---------------------------------------------------------------------------
    def target_specs_from_arg(self):
        if self.targets is None or isinstance(self.targets, str):
            return [(self.targets, {}, False)] if self.targets else []
        if isinstance(self.targets, dict):
            for k, v in self.targets.items():
                if v is not None and not isinstance(v, dict):
                    raise OptionError(f'{type(self).__name__}: per-target options of {k!r} must be a '
                                      f'dict (or None), got {v!r}')
            return [(k, dict(v or {}), False) for k, v in self.targets.items()]
        if isinstance(self.targets, (list, tuple)):
            return [(t, {}, False) for t in self.targets]
        raise OptionError(f'{type(self).__name__}: targets must be a list of roles / patterns or a '
                          f'dict {{pattern: options}}, got {self.targets!r}')

    def target_specs(self):
        """``[(pattern, options, from_default)]`` from the ``targets`` argument."""
        if self.targets is None:
            return [(t, {}, True) for t in self.default_targets]
        return self.target_specs_from_arg()

    def apply(self, backbone: nn.Module) -> nn.Module:
        """Attach to ``backbone`` (in place) and freeze everything but the tuned parameters."""
        if _STATE_ATTR in backbone.__dict__:
            raise ValueError(f'backbone is already tuned with {type(get_peft(backbone)).__name__}')
        self.table = find_table(backbone)
        self.stock_shapes = {k: v.shape for k, v in backbone.state_dict().items()}
        for unit in self.build_units(backbone):
            unit.attach()
            self.units.append(unit)
        self.after_attach(backbone)
        backbone.__dict__[_STATE_ATTR] = self
        self.freeze(backbone)
        return backbone

    def build_units(self, backbone: nn.Module) -> List[PeftUnit]:
        """The (not yet attached) units: one per module matched by the targets."""
        units, seen = [], set()
        modules = dict(backbone.named_modules())
        for pattern, opts, from_default in self.target_specs():
            for name in resolve_targets(backbone, self.table, pattern, required=not from_default):
                if name in seen:
                    continue
                seen.add(name)
                unit_cls = self.unit_class(modules[name])
                merged = {**self.options, **opts}
                units.append(unit_cls(self, backbone, name, modules[name], self.table.role_of(name),
                                      from_default,
                                      **{k: v for k, v in merged.items() if k in unit_cls.option_spec}))
        return units

    def unit_class(self, module: nn.Module):
        """The unit class for ``module`` (methods mixing unit kinds override this)."""
        return self.unit_cls

    def after_attach(self, backbone: nn.Module) -> None:
        """Hook for methods that coordinate their units (VPT-shallow)."""

    # -- what is trained ----------------------------------------------------------------------
    def trainable_names(self, backbone: nn.Module) -> List[str]:
        names = []
        for unit in self.units:
            names += unit.full_names(unit.param_names)
        return names

    def buffer_names(self) -> List[str]:
        names = []
        for unit in self.units:
            names += unit.full_names(unit.buffer_names)
        return names

    def tuned_names(self, backbone: nn.Module) -> List[str]:
        """What trains: the method's tensors (:meth:`trainable_names`) and the parameters of
        the modules the table trains with every method (the classifier inside a timm model)."""
        names = list(self.trainable_names(backbone))
        pattern = self.table.always_trained
        if pattern:
            names += [n for n, _ in backbone.named_parameters() if n not in names
                      and re.fullmatch(pattern, n.rsplit('.', 1)[0])]
        return names

    def freeze(self, backbone: nn.Module) -> None:
        trainable = set(self.tuned_names(backbone))
        for name, param in backbone.named_parameters():
            param.requires_grad_(name in trainable)

    def num_trainable(self, backbone: nn.Module) -> int:
        return sum(p.numel() for p in backbone.parameters() if p.requires_grad)

    def no_weight_decay(self) -> List[str]:
        """Names (relative to the backbone) of the trainable tensors that get no weight decay
        (timm's ``no_weight_decay()``), from the units' ``no_decay`` prefixes."""
        names = []
        for unit in self.units:
            names += unit.full_names(n for n in unit.param_names if n.startswith(unit.no_decay))
        return names

    # -- PEFT-only state ----------------------------------------------------------------------
    def peft_state_dict(self, backbone: nn.Module) -> Dict[str, torch.Tensor]:
        wanted = set(self.tuned_names(backbone)) | set(self.buffer_names())
        return {k: v.detach().clone() for k, v in backbone.state_dict(keep_vars=True).items()
                if k in wanted}

    def load_peft_state_dict(self, backbone: nn.Module, state_dict: Dict[str, torch.Tensor]):
        expected = self.peft_state_dict(backbone)
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        wrong = sorted(k for k in set(expected) & set(state_dict)
                       if expected[k].shape != state_dict[k].shape)
        if missing or unexpected or wrong:
            raise KeyError(
                f'PEFT state does not fit this {type(self).__name__} backbone: '
                f'missing {_short(missing)}, unexpected {_short(unexpected)}, '
                f'shape mismatch {_short(wrong)}')
        current = backbone.state_dict(keep_vars=True)
        with torch.no_grad():
            for k, v in state_dict.items():
                current[k].copy_(v)

    # -- merge --------------------------------------------------------------------------------
    def merge_blockers(self) -> List[str]:
        """Why this tuned backbone cannot merge (empty when it can): the method's reason, or each
        unit placed where its tensors have no stock parameter to fold into."""
        if not self.mergeable:
            return [self.not_mergeable_reason()]
        return [reason for reason in (u.merge_blocker() for u in self.units) if reason]

    def merge(self, backbone: nn.Module) -> nn.Module:
        """Fold the tuning into the stock parameters; return the (same) stock backbone."""
        blockers = self.merge_blockers()
        if blockers:
            raise MergeError('; '.join(blockers))
        with torch.no_grad():
            for unit in self.units:
                unit.merge()
        return self._remove(backbone, check=True)

    def not_mergeable_reason(self) -> str:
        return f'{type(self).__name__} cannot be merged into the stock backbone'

    def unapply(self, backbone: nn.Module) -> nn.Module:
        """Remove the method without folding it in (the stock model, as before tuning)."""
        return self._remove(backbone, check=False)

    def _remove(self, backbone: nn.Module, check: bool) -> nn.Module:
        for unit in self.units:
            unit.detach()
        self.units = []
        backbone.__dict__.pop(_STATE_ATTR, None)
        shapes = {k: v.shape for k, v in backbone.state_dict().items()}
        if check and shapes != self.stock_shapes:
            diff = sorted(set(shapes.items()) ^ set(self.stock_shapes.items()))
            raise MergeError(f'merged backbone differs from the stock one: {_short(diff)}')
        for param in backbone.parameters():
            param.requires_grad_(True)
        return backbone

    def describe(self) -> dict:
        """Plain-type description for checkpoint meta."""
        return dict(type=type(self).__name__, targets=copy.deepcopy(self.targets),
                    **{k: v for k, v in self.options.items()
                       if isinstance(v, (int, float, str, bool, type(None), list, tuple))})


def get_peft(backbone: nn.Module) -> Optional[PeftMethod]:
    """The method applied to ``backbone``, or None."""
    return backbone.__dict__.get(_STATE_ATTR)


def _short(items, n=8):
    items = list(items)
    return '[' + ', '.join(map(str, items[:n])) + (f', ... ({len(items) - n} more)' if len(items) > n else '') + ']'
