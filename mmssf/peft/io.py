"""Saving and loading PEFT-only files, and stock weights into a tuned backbone.

The backbone comes first, as in ``apply_peft(backbone, cfg)``: ``save_peft(backbone, path)``,
``load_peft(backbone, path)``. The older ``(path, backbone)`` order still works, with a
:class:`DeprecationWarning`.
"""
import os
import warnings
from typing import Dict, Tuple

import torch
from torch import nn

from ..fileio import atomic_save, load_checkpoint_file
from ..integrity import seal_checkpoint
from .base import _short, get_peft


def _is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike))


def _backbone_and_path(func: str, first, second) -> Tuple[nn.Module, str]:
    """``(backbone, path)`` from the two arguments in either order (the old ``(path, backbone)``
    warns); a clear TypeError when they are not a module and a path."""
    if isinstance(first, nn.Module) and _is_path(second):
        return first, os.fspath(second)
    if _is_path(first) and isinstance(second, nn.Module):
        warnings.warn(f'{func}(path, backbone) is deprecated: call {func}(backbone, path), the '
                      f'order of apply_peft(backbone, cfg)', DeprecationWarning, stacklevel=3)
        return second, os.fspath(first)

    def kind(value):
        name = f'{type(value).__module__}.{type(value).__qualname__}'
        return f'a {name}' if isinstance(value, nn.Module) else f'{name} {value!r:.80}'

    raise TypeError(f'{func}(backbone, path): backbone must be a torch.nn.Module tuned with '
                    f'apply_peft and path a file path (str or os.PathLike); got {kind(first)} '
                    f'and {kind(second)}')


def save_peft(backbone: nn.Module, path: str, extra_meta: dict = None) -> None:
    """Write only the tuned tensors of ``backbone`` to ``path`` (plain tensors + a plain-type
    meta; loads with weights_only). Written atomically: ``path`` is never half written."""
    backbone, path = _backbone_and_path('save_peft', backbone, path)
    if extra_meta is not None and not isinstance(extra_meta, dict):
        raise TypeError(f'save_peft: extra_meta must be a dict, got {type(extra_meta).__name__}')
    method = get_peft(backbone)
    if method is None:
        raise ValueError(f'save_peft: the {type(backbone).__name__} is not tuned: apply a PEFT '
                         f'method first (apply_peft(backbone, dict(type=...)))')
    atomic_save(seal_checkpoint({'meta': dict(peft=method.describe(), **(extra_meta or {})),
                                 'state_dict': method.peft_state_dict(backbone)}), path)


def load_peft(backbone: nn.Module, path: str) -> dict:
    """Load a file written by :func:`save_peft` into an already tuned ``backbone``; return its
    meta."""
    backbone, path = _backbone_and_path('load_peft', backbone, path)
    method = get_peft(backbone)
    if method is None:
        raise ValueError('backbone is not tuned: apply the PEFT method named in the file first')
    ckpt = load_checkpoint_file(path)  # errors name the file: unsafe, empty, truncated, corrupt
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('state_dict'), dict):
        raise ValueError(f'{path} is not a PEFT-only file (save_peft writes a dict with '
                         f'"state_dict" and "meta"; for a full checkpoint use load_from)')
    saved = ckpt.get('meta', {}).get('peft', {}).get('type')
    if saved is not None and saved != type(method).__name__:
        raise ValueError(f'{path} holds {saved} parameters but the backbone is tuned with '
                         f'{type(method).__name__}')
    method.load_peft_state_dict(backbone, ckpt['state_dict'])
    return ckpt.get('meta', {})


def load_base_weights(backbone: nn.Module, state_dict: Dict[str, torch.Tensor]) -> None:
    """Load stock (pretrained) weights into a possibly tuned backbone.

    Keys are the stock ones (tuning never renames), so no remapping happens. Only the PEFT
    tensors may be missing; anything else missing, unexpected or mis-shaped is an error naming
    the keys.
    """
    method = get_peft(backbone)
    peft_keys = set(method.peft_state_dict(backbone)) if method is not None else set()
    own = backbone.state_dict()
    missing = sorted(k for k in own if k not in state_dict and k not in peft_keys)
    unexpected = sorted(k for k in state_dict if k not in own)
    wrong = sorted(k for k in state_dict if k in own and own[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong:
        raise KeyError(f'weights do not fit {type(backbone).__name__}: missing {_short(missing)}, '
                       f'unexpected {_short(unexpected)}, shape mismatch {_short(wrong)}')
    backbone.load_state_dict(state_dict, strict=False)
