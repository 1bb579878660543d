"""Build a method from a config dict and apply it."""
import copy

from torch import nn

from ..registry import PEFT_METHODS
from .base import PeftMethod


def build_peft(cfg) -> PeftMethod:
    """``dict(type='SSF', ...)`` -> method instance (names listed on an unknown type)."""
    if isinstance(cfg, PeftMethod):
        return cfg
    cfg = copy.deepcopy(dict(cfg))
    method_type = cfg.pop('type')
    cls = PEFT_METHODS.get(method_type)
    if cls is None:
        raise KeyError(f'unknown PEFT method {method_type!r}; registered: '
                       f'{", ".join(sorted(PEFT_METHODS.module_dict))}')
    return cls(**cfg)


def apply_peft(backbone: nn.Module, cfg) -> PeftMethod:
    method = build_peft(cfg)
    method.apply(backbone)
    return method
