"""A SHA-256 of a checkpoint's tensor payload, recorded in its meta and verified at load.

torch's zip reader does not check what it reads: flipped bytes inside a tensor load silently
(and train or evaluate on). mmssf records ``meta['payload_sha256']`` in every checkpoint it
writes (``mmssf.AtomicCheckpointHook``'s ``X.pth``, ``X_merged.pth``, ``merge_peft.py``) and
verifies it on every load that goes through mmengine's checkpoint loader in a process that
imported mmssf (``load_from``, ``--resume``, ``tools/test.py``, ``init_cfg`` pretrained weights)
and in mmssf's tools. Files without the key (stock checkpoints) load as before.

The digest covers every tensor outside ``meta`` — model, optimizer, schedulers, message hub,
RNG states — by key path, dtype, shape and bytes, in a fixed order, so it does not depend on how
the file was serialized (the same tensors give the same digest after a load / save round trip).
"""
import hashlib
from typing import Iterator, Optional, Tuple

import torch

from .checkpoint_errors import CorruptCheckpointError

__all__ = ['DIGEST_KEY', 'CorruptCheckpointError', 'payload_sha256', 'seal_checkpoint',
           'verify_checkpoint']

DIGEST_KEY = 'payload_sha256'


def _tensors(node, path: str) -> Iterator[Tuple[str, torch.Tensor]]:
    if isinstance(node, torch.Tensor):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _tensors(value, f'{path}/{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _tensors(value, f'{path}/{i}')


def _bytes_of(tensor: torch.Tensor):
    tensor = tensor.detach()
    if tensor.is_sparse:
        tensor = tensor.to_dense()
    tensor = tensor.cpu().contiguous().reshape(-1)
    return tensor.view(torch.uint8).numpy() if tensor.numel() else b''


def payload_sha256(checkpoint) -> str:
    """Hex SHA-256 over every tensor of ``checkpoint`` outside its ``meta``."""
    found = []
    if isinstance(checkpoint, dict):
        for key, value in checkpoint.items():
            if key != 'meta':
                found += list(_tensors(value, str(key)))
    else:
        found = list(_tensors(checkpoint, ''))
    digest = hashlib.sha256()
    for path, tensor in sorted(found, key=lambda item: item[0]):
        digest.update(f'{path}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode())
        digest.update(_bytes_of(tensor))
    return digest.hexdigest()


def seal_checkpoint(checkpoint: dict) -> dict:
    """Record the payload digest in ``checkpoint['meta']`` (in place; returned for chaining)."""
    checkpoint.setdefault('meta', {})[DIGEST_KEY] = payload_sha256(checkpoint)
    return checkpoint


def recorded_digest(checkpoint) -> Optional[str]:
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    value = meta.get(DIGEST_KEY) if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def verify_checkpoint(checkpoint, source: str) -> bool:
    """Raise :class:`CorruptCheckpointError` naming ``source`` if its tensors do not match the
    recorded digest. Returns True if a digest was verified, False if the file records none."""
    expected = recorded_digest(checkpoint)
    if expected is None:
        return False
    actual = payload_sha256(checkpoint)
    if actual != expected:
        raise CorruptCheckpointError(
            f'{source} is corrupted: the SHA-256 of its tensors is {actual[:16]}... but the file '
            f'recorded {expected[:16]}... when it was written, so bytes changed on disk or in a '
            f'copy. Refusing to load it; use an earlier checkpoint or copy the file again')
    return True
