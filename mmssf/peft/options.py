"""Typed, validated options of the tuning methods.

Each unit class declares its options once, as ``options = dict(r=Option(8, int, min=1, doc=...))``;
a method accepts the union of its unit classes' options (shared by every target, overridable per
target) plus the arguments of its own signature. Values are checked when the method is built:
an unknown or misspelled name, a wrong type or an out-of-range value is an error that names the
option and lists the valid ones. Units read their options as attributes of a namespace
(``self.opts.r``), never with ``.get``, so no option can be silently ignored.
"""
import difflib
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

_TYPE_NAMES = {int: 'int', float: 'float', bool: 'bool', str: 'str', list: 'list', tuple: 'tuple',
               dict: 'dict'}


class OptionError(ValueError):
    """A method option is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class Option:
    """One option: default, accepted type(s) and the allowed values.

    Args:
        default: value when not given (``None`` means "not set": the unit derives it).
        type: accepted type or tuple of types (``float`` also accepts ``int``; ``bool`` is never
            taken for ``int`` / ``float``).
        doc: one line for messages and docstrings.
        min / max: inclusive bounds for numbers.
        min_exclusive: ``min`` is exclusive (e.g. a rank must be > 0).
        choices: allowed values (strings).
        nullable: ``None`` is a valid value (implied when the default is ``None``).
    """
    default: Any
    type: Any
    doc: str = ''
    min: Optional[float] = None
    max: Optional[float] = None
    min_exclusive: bool = False
    choices: Optional[Tuple] = None
    nullable: bool = False

    def types(self) -> Tuple[type, ...]:
        types = self.type if isinstance(self.type, tuple) else (self.type, )
        return types + ((int, ) if float in types and int not in types else ())

    def describe(self) -> str:
        types = self.type if isinstance(self.type, tuple) else (self.type, )
        text = '|'.join(_TYPE_NAMES.get(t, getattr(t, '__name__', str(t))) for t in types)
        if self.choices:
            text = ' | '.join(repr(c) for c in self.choices)
        bounds = []
        if self.min is not None:
            bounds.append(f'{">" if self.min_exclusive else ">="} {self.min}')
        if self.max is not None:
            bounds.append(f'<= {self.max}')
        if bounds:
            text += ' ' + ' and '.join(bounds)
        return f'{text}, default {self.default!r}'

    def check(self, owner: str, name: str, value):
        if value is None and (self.nullable or self.default is None):
            return None
        types = self.types()
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            raise OptionError(f'{owner}: option {name}={value!r} has the wrong type '
                              f'({type(value).__name__}); expected {self.describe()}')
        if self.choices is not None and value not in self.choices:
            raise OptionError(f'{owner}: option {name}={value!r} is not one of '
                              f'{", ".join(map(repr, self.choices))}')
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise OptionError(f'{owner}: option {name}={value!r} must be finite')
            low_bad = self.min is not None and (value <= self.min if self.min_exclusive
                                                else value < self.min)
            high_bad = self.max is not None and value > self.max
            if low_bad or high_bad:
                raise OptionError(f'{owner}: option {name}={value!r} is out of range; expected '
                                  f'{self.describe()}')
        if float in (self.type if isinstance(self.type, tuple) else (self.type, )) \
                and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        return value


def unknown_option_error(owner: str, name: str, valid: Iterable[str]) -> OptionError:
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1) or \
        [v for v in valid if name.startswith(v) or v.startswith(name)][:1]  # 'rank' -> 'r'
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    listed = ', '.join(valid) if valid else 'none'
    return OptionError(f'{owner}: unknown option {name!r}{hint}. Valid options: {listed}')


def validate(owner: str, spec: Mapping[str, Option], values: Mapping[str, Any],
             extra_valid: Iterable[str] = ()) -> Dict[str, Any]:
    """``values`` checked against ``spec``; returns every option of ``spec`` (defaults filled)."""
    out = {}
    for name, value in values.items():
        if name not in spec:
            raise unknown_option_error(owner, name, list(spec) + list(extra_valid))
        out[name] = spec[name].check(owner, name, value)
    for name, option in spec.items():
        out.setdefault(name, option.default)
    return out


def namespace(spec: Mapping[str, Option], values: Mapping[str, Any]) -> SimpleNamespace:
    """Attribute access to validated options (only the names of ``spec``)."""
    return SimpleNamespace(**{k: values[k] for k in spec})


def options_doc(spec: Mapping[str, Option]) -> str:
    """``name (type ...): doc`` lines, for docstrings and ``--help`` texts."""
    return '\n'.join(f'{name} ({option.describe()}): {option.doc}' for name, option in spec.items())
