"""Saving and loading PEFT-only files, and stock weights into a tuned backbone."""
from typing import Dict

import torch
from torch import nn

from ..fileio import atomic_save, load_checkpoint_file
from ..integrity import seal_checkpoint
from .base import _short, get_peft


def save_peft(path: str, backbone: nn.Module, extra_meta: dict = None) -> None:
    """Write only the tuned tensors (plain tensors + a plain-type meta; loads with weights_only)."""
    method = get_peft(backbone)
    if method is None:
        raise ValueError('backbone is not tuned: apply a PEFT method first')
    atomic_save(seal_checkpoint({'meta': dict(peft=method.describe(), **(extra_meta or {})),
                                 'state_dict': method.peft_state_dict(backbone)}), path)


def load_peft(path: str, backbone: nn.Module) -> dict:
    """Load a file written by :func:`save_peft` into an already tuned backbone; return its meta."""
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
