"""On ``--resume``: the ``X_merged.pth`` of the resumed ``X.pth`` is written again when it is
missing (a kill between the two files) or does not load (written by an older, non-atomic
version). The resumed model *is* ``X.pth``, so the twin written from it is the one that would
have been written at save time."""
import os.path as osp
from typing import Optional

from mmengine.logging import print_log

from ..fileio import load_checkpoint_file

__all__ = ['resumed_checkpoint', 'twin_problem']


def resumed_checkpoint(runner) -> Optional[str]:
    """The file the runner resumed from, or None when it did not resume."""
    if not getattr(runner, '_resume', False):
        return None
    name = getattr(runner, '_load_from', None)
    if name is None:
        from mmengine.runner import find_latest_checkpoint
        name = find_latest_checkpoint(runner.work_dir)
    return str(name) if name and osp.isfile(str(name)) else None


def twin_problem(path: str) -> Optional[str]:
    """Why ``path`` is not a usable merged checkpoint (None when it loads and verifies)."""
    if not osp.isfile(path):
        return 'missing'
    try:
        ckpt = load_checkpoint_file(path)
    except Exception as err:  # noqa: BLE001  (any failure means: write it again)
        return f'broken ({err})'
    if not isinstance(ckpt, dict) or 'state_dict' not in ckpt:
        return 'not a merged checkpoint (no state_dict)'
    return None


def repair_on_resume(runner, twin_of, write) -> None:
    """Call ``write(ckpt_path)`` if the resumed checkpoint's twin ``twin_of(ckpt_path)`` is
    missing or broken."""
    ckpt_path = resumed_checkpoint(runner)
    if ckpt_path is None:
        return
    out = twin_of(ckpt_path)
    problem = twin_problem(out)
    if problem is None:
        return
    print_log(f'ReparamCheckpointHook: {out} is {problem}: writing it again from the resumed '
              f'{ckpt_path}', logger='current')
    write(ckpt_path)
