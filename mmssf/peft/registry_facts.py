"""What the rest of mmssf knows about methods, read from the registry (never hand-kept lists).

Each method declares its facts once, on its class and its unit classes (:mod:`mmssf.peft.base`);
the optimizer constructor, the checkpoint check, the SPT allocator, ``count_params.py``, the
benchmarks and the tests ask here.
"""
from typing import Dict, List, Optional, Tuple

from ..registry import PEFT_METHODS
from .base import PeftMethod


def method_classes() -> List[type]:
    """Every registered method class once (aliases such as ``'Linear'`` / ``'LinearProbe'``
    collapse), sorted by class name. (Importing this module runs ``mmssf/peft/__init__.py``
    first, which registers every method.)"""
    classes = {cls for cls in PEFT_METHODS.module_dict.values()
               if isinstance(cls, type) and issubclass(cls, PeftMethod)}
    return sorted(classes, key=lambda c: c.__name__)


def config_names(cls: type) -> List[str]:
    """The ``type=`` names a method class is registered under."""
    return sorted(name for name, c in PEFT_METHODS.module_dict.items() if c is cls)


def tensor_prefix_owners() -> Dict[str, Tuple[str, ...]]:
    """``{tensor-name prefix: (method class names that add such tensors)}``."""
    owners: Dict[str, List[str]] = {}
    for cls in method_classes():
        for prefix in cls.tensor_prefixes():
            owners.setdefault(prefix, []).append(cls.__name__)
    return {p: tuple(m) for p, m in sorted(owners.items(), key=lambda kv: -len(kv[0]))}


def methods_of_tensor(key: str) -> Optional[str]:
    """``'SSF/RLRR'``-style name of the methods that add a tensor named like ``key``, or None."""
    leaf = key.rsplit('.', 1)[-1]
    for prefix, owners in tensor_prefix_owners().items():
        if leaf.startswith(prefix):
            return '/'.join(owners)
    return None


def no_decay_prefixes() -> Tuple[str, ...]:
    """Union of every method's no-weight-decay tensor prefixes."""
    return tuple(dict.fromkeys(p for cls in method_classes() for p in cls.no_decay_prefixes()))


# -- method cards (mmssf.peft.card) --------------------------------------------------------------
def zoo_methods() -> Dict[str, type]:
    """``{zoo config prefix: method class}`` of every method with zoo configs."""
    found: Dict[str, type] = {}
    for cls in method_classes():
        if cls.card.zoo:
            if cls.card.zoo in found:
                raise TypeError(f'{cls.__name__} and {found[cls.card.zoo].__name__} both claim '
                                f'the zoo prefix {cls.card.zoo!r}')
            found[cls.card.zoo] = cls
    return found


def zoo_folders() -> Tuple[str, ...]:
    """The method folders of the config zoo (``configs/<folder>/``)."""
    return tuple(sorted({cls.card.folder for cls in zoo_methods().values()}))


def suite_methods(suite: str) -> Tuple[str, ...]:
    """Zoo prefixes of the methods that join the benchmark suite ``suite``."""
    return tuple(prefix for prefix, cls in zoo_methods().items() if suite in cls.card.suites)
