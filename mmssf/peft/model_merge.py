"""Merging at the level of a whole model (detector, segmentor, classifier)."""
import copy
from typing import Dict, List, Tuple

import torch
from torch import nn

from .base import MergeError, PeftMethod, get_peft


def tuned_submodules(model: nn.Module) -> List[Tuple[str, nn.Module, PeftMethod]]:
    """``[(prefix, backbone, method)]`` of every tuned module inside ``model``."""
    found = []
    for name, module in model.named_modules():
        method = get_peft(module)
        if method is not None:
            found.append((name, module, method))
    return found


def merged_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The state dict of ``model`` with every tuned backbone merged; ``model`` is left untouched.

    Raises:
        MergeError: a tuned module's method cannot merge (the message says why).
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for prefix, backbone, method in tuned_submodules(model):
        blockers = method.merge_blockers()
        if blockers:
            raise MergeError('; '.join(blockers))
        dot = prefix + '.' if prefix else ''
        for key in list(state):
            if key.startswith(dot):
                del state[key]
        merged = copy.deepcopy(backbone)
        get_peft(merged).merge(merged)
        state.update({dot + k: v.detach().clone() for k, v in merged.state_dict().items()})
    return state


def peft_summary(model: nn.Module) -> dict:
    """Plain-type summary: method(s), trainable and total parameter counts."""
    methods = tuned_submodules(model)
    return dict(
        methods={prefix or '<root>': method.describe() for prefix, _, method in methods},
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=sum(p.numel() for p in model.parameters()))
