"""SPT step 1: task-specific parameter sensitivity (He et al., "Sensitivity-Aware Visual Parameter-Efficient
Fine-Tuning", ICCV 2023, Algorithm 1).

``s_n = Σ_batches g_n²`` for every scored backbone parameter, from one forward + backward per
mini-batch of the task's own training data (no per-sample gradients). The forward runs in eval
mode (no dropout / drop-path, frozen norm statistics) so the scores are deterministic for a seed.
Memory is that of one training step plus one fp32 score tensor per scored parameter.
"""
import logging
import re
from typing import Callable, Dict, Iterable

import torch
from mmengine.logging import print_log
from torch import nn

#: parameters SPT never tunes: patch embedding, class / distillation tokens, position embeddings
EXCLUDED = (r'patch_embed\..*', r'(.*\.)?cls_token', r'(.*\.)?dist_token', r'(.*\.)?pos_embed',
            r'(.*\.)?absolute_pos_embed')


def is_excluded(name: str) -> bool:
    return any(re.fullmatch(p, name) for p in EXCLUDED)


def scored_parameters(backbone: nn.Module) -> Dict[str, nn.Parameter]:
    """Backbone parameters that get a sensitivity score (everything but :data:`EXCLUDED`)."""
    return {n: p for n, p in backbone.named_parameters() if not is_excluded(n)}


def batch_size(batch) -> int:
    """Number of samples in an mmengine batch (``dict(inputs=..., data_samples=...)``), a list of
    samples or a batched tensor."""
    if isinstance(batch, dict):
        return batch_size(batch['inputs'] if 'inputs' in batch else next(iter(batch.values())))
    return len(batch) if isinstance(batch, (list, tuple)) else batch.shape[0]


def take(batch, n: int):
    """The first ``n`` samples of a batch (dict values, lists and tensors sliced)."""
    if isinstance(batch, dict):
        return {k: take(v, n) for k, v in batch.items()}
    return batch[:n] if isinstance(batch, (list, tuple, torch.Tensor)) else batch


def mmengine_loss(model: nn.Module, batch) -> torch.Tensor:
    """Training loss of an mmengine model (mmpretrain / mmdet / mmseg) for one data batch."""
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    return loss


def compute_sensitivity(model: nn.Module, backbone: nn.Module, batches: Iterable,
                        num_samples: int = 800,
                        loss_fn: Callable[[nn.Module, object], torch.Tensor] = mmengine_loss,
                        progress: bool = True):
    """Accumulate squared gradients of ``backbone``'s scored parameters over ``num_samples``.

    Args:
        model: the whole task model (backbone + neck / heads); its loss drives the gradients.
        backbone: the module inside ``model`` whose parameters are scored.
        batches: iterable of data batches (e.g. the config's train dataloader). The last batch is
            cut so exactly ``num_samples`` samples are used.
        num_samples: C in the paper (default 800).
        loss_fn: ``loss_fn(model, batch) -> scalar``; default: the mmengine model's training loss.
        progress: show a progress bar.

    Returns:
        ``(scores, info)``: ``{param name: fp32 tensor of its shape}`` for the scored parameters
        only, and ``dict(samples=, samples_asked=, batches=)``. When the data runs out before
        ``num_samples``, every available sample is used and a warning says so (``info`` records it).
    """
    if num_samples <= 0:
        raise ValueError(f'num_samples must be positive, got {num_samples}')
    params = scored_parameters(backbone)
    if not params:
        raise ValueError(f'{type(backbone).__name__} has no parameter SPT can score')
    scores = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    requires = {id(p): p.requires_grad for p in model.parameters()}
    was_training = model.training
    # deterministic forward: no dropout / drop-path, fixed norm statistics. Before enabling the
    # gradients: some backbones re-freeze stages in train() / eval()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    bar = None
    if progress:
        from mmengine.utils import ProgressBar
        bar = ProgressBar(num_samples)
    used = num_batches = 0
    try:
        for batch in batches:
            n = min(batch_size(batch), num_samples - used)
            if n < batch_size(batch):
                batch = take(batch, n)
            for p in params.values():
                p.grad = None
            loss_fn(model, batch).backward()
            with torch.no_grad():
                for name, p in params.items():
                    if p.grad is not None:
                        scores[name].add_(p.grad.float().square())
            used += n
            num_batches += 1
            if bar is not None:
                for _ in range(n):
                    bar.update()
            if used >= num_samples:
                break
    finally:
        model.train(was_training)
        for p in model.parameters():
            p.grad = None
            p.requires_grad_(requires[id(p)])
    if used == 0:
        raise ValueError('the dataloader yielded no samples: cannot compute SPT sensitivity')
    info = dict(samples=used, samples_asked=num_samples, batches=num_batches)
    if used < num_samples:
        info['note'] = (f'the dataloader has only {used} samples, fewer than the {num_samples} '
                        f'asked; used all {used}')
        print_log(f'SPT sensitivity: {info["note"]}', logger='current', level=logging.WARNING)
    return scores, info
