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
parameter cost ``num_params(module, r, row_blocks=1)`` and ``can_wrap(module)`` that SPT's
allocation uses.

Options reach exactly the unit classes that declare them. A name declared by two unit classes of
one method (RLRR's ``shift``: its RLRR and its SSF units) is an error unless the method lists it in
``fan_out_options`` (then one value reaches both); options the method sets itself
(``fixed_options``: SPT's rank and indices, from its allocation) are not advertised and refused.
The method's docstring lists its unit options, generated from the specs (:func:`options_doc`).

A method may also own tensors of its own at the backbone root (a factor shared by every unit, as
FacT / VeRA need): it creates them in :meth:`PeftMethod.create_method_tensors` with
:meth:`PeftMethod.add_method_parameter` under its ``method_prefixes``; they are trained, saved in
the PEFT-only file, attributed by the checkpoint check, decay-free when ``method_no_decay`` says
so, and removed when the method merges (its units fold them into the stock weights first).
"""
import copy
import inspect
import re
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .card import MethodCard
from .hooks import add_weight_transform, host_of, needs_reparam, remove_weight_transform
from .options import (Option, OptionError, namespace, options_doc, unknown_option_error,
                      validate)
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
    def num_params(cls, module: nn.Module, r: int, row_blocks: int = 1) -> int:
        """Trainable parameters of one rank-``r`` unit on ``module`` (structured kinds), or on one
        of ``row_blocks`` equal blocks of its output rows (a q, k or v block of a fused qkv)."""
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
    #: what the zoo, the suites, the tests and the benchmarks know of the method
    card = MethodCard()
    #: unit options declared by several of the unit classes that deliberately reach all of them
    fan_out_options: Tuple[str, ...] = ()
    #: unit options the method sets itself (never taken from the user, never advertised)
    fixed_options: Tuple[str, ...] = ()
    #: name prefixes of the tensors the method owns at the backbone root (shared by its units)
    method_prefixes: Tuple[str, ...] = ()
    #: those of them that get no weight decay
    method_no_decay: Tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if '__doc__' in cls.__dict__ and cls.__doc__:
            cls.__doc__ = _with_options_doc(cls)

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
        self.method_param_names: List[str] = []
        self.method_buffer_names: List[str] = []

    # -- facts from the unit classes ----------------------------------------------------------
    @classmethod
    def all_unit_classes(cls) -> Tuple[type, ...]:
        return tuple(cls.unit_classes) or ((cls.unit_cls, ) if cls.unit_cls is not None else ())

    @classmethod
    def option_owners(cls) -> Dict[str, Tuple[type, ...]]:
        """``{option name: unit classes that take it}`` for every option the user may set.

        Raises:
            TypeError: two unit classes declare the same name with different specs and the
                method does not list it in ``fan_out_options`` (the value would reach a unit that
                did not ask for it).
        """
        owners: Dict[str, List[type]] = {}
        specs: Dict[str, List[Option]] = {}
        for unit_cls in cls.all_unit_classes():
            for name, option in unit_cls.option_spec.items():
                if name in cls.fixed_options:
                    continue
                owners.setdefault(name, []).append(unit_cls)
                if all(option is not o for o in specs.setdefault(name, [])):
                    specs[name].append(option)
        shared = sorted(n for n, s in specs.items() if len(s) > 1 and n not in cls.fan_out_options)
        if shared:
            raise TypeError(f'{cls.__name__}: unit options {shared} are declared by several unit '
                            f'classes; rename them or list them in fan_out_options')
        return {name: tuple(units) for name, units in owners.items()}

    @classmethod
    def unit_option_specs(cls) -> Dict[str, Option]:
        """The advertised unit options (the first declaration of a fanned-out one)."""
        return {name: units[0].option_spec[name] for name, units in cls.option_owners().items()}

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
        """Name prefixes of every tensor the method adds (its units' and its own)."""
        return tuple(dict.fromkeys(tuple(p for u in cls.all_unit_classes() for p in u.prefixes)
                                   + tuple(cls.method_prefixes)))

    @classmethod
    def no_decay_prefixes(cls) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(tuple(p for u in cls.all_unit_classes() for p in u.no_decay)
                                   + tuple(cls.method_no_decay)))

    def _validate_shared(self, options, owner):
        """Each option must be advertised (known to a unit class, not fixed by the method) and
        valid for every unit class that takes it (the units validate again when built)."""
        options = dict(options)
        owners = self.option_owners()
        for key, value in options.items():
            if key not in owners:
                if key in self.fixed_options:
                    raise OptionError(f'{owner}: option {key!r} is set by the method itself, not '
                                      f'by the config. Valid options: '
                                      f'{", ".join(self.method_option_names()) or "none"}')
                raise unknown_option_error(owner, key, self.method_option_names())
            for unit_cls in owners[key]:
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
        self.create_method_tensors(backbone)
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

    def create_method_tensors(self, backbone: nn.Module) -> None:
        """Hook for methods that own tensors at the backbone root (before the units are built;
        see :meth:`add_method_parameter`)."""

    def _check_method_tensor(self, backbone: nn.Module, name: str) -> None:
        if not self.method_prefixes or not name.startswith(self.method_prefixes):
            raise AssertionError(f'{type(self).__name__} adds {name!r} at the backbone root, which '
                                 f'has none of its declared method_prefixes {self.method_prefixes}')
        if name in backbone._parameters or name in backbone._buffers or \
                name in backbone._modules or name in backbone.__dict__:
            raise ValueError(f'the backbone already has {name!r}: two methods add it')

    def add_method_parameter(self, backbone: nn.Module, name: str,
                             tensor: torch.Tensor) -> nn.Parameter:
        """A trainable tensor of the whole method, registered on the backbone root as ``name``
        (one of ``method_prefixes``); read it as ``getattr(backbone, name)``."""
        self._check_method_tensor(backbone, name)
        param = nn.Parameter(tensor)
        backbone.register_parameter(name, param)
        self.method_param_names.append(name)
        return param

    def add_method_buffer(self, backbone: nn.Module, name: str,
                          tensor: torch.Tensor) -> torch.Tensor:
        """A frozen tensor of the whole method (saved with the PEFT-only state, e.g. VeRA's
        shared random matrices), registered on the backbone root."""
        self._check_method_tensor(backbone, name)
        backbone.register_buffer(name, tensor)
        self.method_buffer_names.append(name)
        return tensor

    def unit_class(self, module: nn.Module):
        """The unit class for ``module`` (methods mixing unit kinds override this)."""
        return self.unit_cls

    def after_attach(self, backbone: nn.Module) -> None:
        """Hook for methods that coordinate their units (VPT-shallow)."""

    # -- what is trained ----------------------------------------------------------------------
    def trainable_names(self, backbone: nn.Module) -> List[str]:
        names = list(self.method_param_names)
        for unit in self.units:
            names += unit.full_names(unit.param_names)
        return names

    def buffer_names(self) -> List[str]:
        names = list(self.method_buffer_names)
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
        names = [n for n in self.method_param_names if n.startswith(self.method_no_decay)]
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
        for name in self.method_param_names:
            del backbone._parameters[name]
        for name in self.method_buffer_names:
            del backbone._buffers[name]
        self.method_param_names, self.method_buffer_names = [], []
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


def _with_options_doc(cls) -> str:
    """``cls``'s docstring with its advertised unit options appended, from the specs."""
    try:
        specs = cls.unit_option_specs()
    except TypeError:
        return cls.__doc__  # an ill-declared method: the registry test names it
    # (the method's own arguments, e.g. VPT's num_prompts with its own default, are its Args)
    own = set(inspect.signature(cls.__init__).parameters)
    specs = {name: spec for name, spec in specs.items() if name not in own}
    if not specs:
        return cls.__doc__
    doc = inspect.cleandoc(cls.__doc__)
    fanned = [n for n in specs if len(cls.option_owners()[n]) > 1 and n in cls.fan_out_options]
    where = (' (shared by every target, overridable per target: ``targets={pattern: dict(...)}``)'
             if cls.accepts_targets else '')
    lines = ['', f'Unit options, from the units\' ``option_spec``{where}:']
    lines += ['    ' + line for line in options_doc(specs).splitlines()]
    if fanned:
        lines.append(f'    ({", ".join(fanned)}: one value reaches every unit kind that has it)')
    return doc + '\n' + '\n'.join(lines) + '\n'


def _short(items, n=8):
    items = list(items)
    return '[' + ', '.join(map(str, items[:n])) + (f', ... ({len(items) - n} more)' if len(items) > n else '') + ']'
