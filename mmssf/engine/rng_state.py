"""Random number generator states: captured into checkpoints, restored on resume.

mmengine re-seeds on resume but does not save where the generators stood, so a resumed run with
dropout / drop-path / random augmentation draws other numbers than the uninterrupted run. The
states of Python's ``random``, NumPy's global generator, torch's CPU generator and every CUDA
device's generator are stored (as tensors and plain types: ``weights_only`` loads them) and put
back right before the resumed run draws its first number.
"""
import random
from typing import Optional

import numpy as np
import torch

__all__ = ['capture_rng_state', 'restore_rng_state']


def capture_rng_state() -> dict:
    """The current state of every global generator a training step draws from."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = dict(
        python=dict(version=version, state=torch.tensor(internal, dtype=torch.int64),
                    gauss_next=gauss_next),
        numpy=dict(kind=str(kind), keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                   has_gauss=int(has_gauss), cached_gaussian=float(cached)),
        torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> Optional[str]:
    """Put back a state from :func:`capture_rng_state`; returns a note on what could not be
    restored (None when everything was)."""
    py = state['python']
    random.setstate((py['version'], tuple(int(v) for v in py['state'].tolist()), py['gauss_next']))
    npy = state['numpy']
    np.random.set_state((npy['kind'], npy['keys'].numpy().astype(np.uint32), npy['pos'],
                         npy['has_gauss'], npy['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    cuda = state.get('cuda')
    if cuda is None:
        return None
    if not torch.cuda.is_available():
        return 'CUDA generator states were saved but CUDA is not available: not restored'
    if len(cuda) != torch.cuda.device_count():
        return (f'{len(cuda)} CUDA generator states were saved but {torch.cuda.device_count()} '
                f'devices are visible: not restored')
    torch.cuda.set_rng_state_all(cuda)
    return None
