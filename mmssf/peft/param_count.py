"""Trainable / total parameter counts in the line users of Hugging Face ``peft`` know:
``trainable params: 282,724 || all params: 86,081,380 || trainable%: 0.3284``."""
from typing import Tuple

from torch import nn

__all__ = ['count_trainable', 'format_trainable', 'print_trainable_parameters']


def count_trainable(model: nn.Module) -> Tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``model`` (shared parameters counted once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f'expected a torch.nn.Module, got {type(model).__name__}')
    params = list(model.parameters())  # (unique: nn.Module.parameters drops duplicates)
    return (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def format_trainable(trainable: int, total: int) -> str:
    return (f'trainable params: {trainable:,} || all params: {total:,} || '
            f'trainable%: {100 * trainable / max(total, 1):.4f}')


def print_trainable_parameters(model: nn.Module) -> str:
    """Print (and return) the ``trainable params: … || all params: … || trainable%: …`` line
    of ``model``, e.g. after ``apply_peft(backbone, cfg)``."""
    line = format_trainable(*count_trainable(model))
    print(line)
    return line
