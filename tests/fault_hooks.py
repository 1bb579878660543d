"""Fault injection for the kill tests, imported by a training process through the config's
``custom_imports`` (``tests/`` on ``PYTHONPATH``). Nothing here acts unless the environment asks
for it, so a kill lands at a point the run reaches by construction, whatever the machine's speed:

- ``MMSSF_TEST_KILL_AT='fsync:K'``: SIGKILL this process at its K-th ``os.fsync`` — a checkpoint's
  bytes are in its temporary file, which is not yet renamed (the write is cut short);
  ``'replace:K'``: right after its K-th ``os.replace`` (a file has its final name, the rest of
  the save — ``last_checkpoint``, the ``_merged`` twin, rotation — has not happened);
  ``'iter:K'``: before training iteration K (between saves).
- ``KillGroupAfterCheckpoint`` (a hook): SIGKILL the whole process group (the benchmark harness
  and its training process) once ``last_checkpoint`` names ``checkpoint`` in a work dir whose
  path contains ``work_dir_part``, at the start of the
  next epoch, when that save has finished. It fires once: it writes ``MMSSF_TEST_KILL_SENTINEL``
  first, and without that variable it does nothing (a rerun in the test's own group is safe).
"""
import os
import os.path as osp
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _counting(func, kill_at, before):
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if before and calls[0] == kill_at:
            _die()
        result = func(*args, **kwargs)
        if not before and calls[0] == kill_at:
            _die()
        return result
    return wrapper


KILL_AT = os.environ.get('MMSSF_TEST_KILL_AT', '')
if KILL_AT:
    _point, _k = KILL_AT.split(':')
    if _point == 'fsync':  # (checkpoint temp files are fsynced before their rename)
        os.fsync = _counting(os.fsync, int(_k), before=True)
    elif _point == 'replace':
        os.replace = _counting(os.replace, int(_k), before=False)
    elif _point != 'iter':
        raise ValueError(f'MMSSF_TEST_KILL_AT={KILL_AT!r}: use fsync:K, replace:K or iter:K')


@HOOKS.register_module()
class KillAtIteration(Hook):
    """``MMSSF_TEST_KILL_AT='iter:K'``: SIGKILL before training iteration K (0-based)."""
    priority = 'HIGHEST'

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        point, _, k = KILL_AT.partition(':')
        if point == 'iter' and runner.iter == int(k):
            _die()


@HOOKS.register_module()
class KillGroupAfterCheckpoint(Hook):
    priority = 'HIGHEST'

    def __init__(self, checkpoint: str, work_dir_part: str = ''):
        self.checkpoint, self.work_dir_part = checkpoint, work_dir_part

    def before_train_epoch(self, runner):
        sentinel = os.environ.get('MMSSF_TEST_KILL_SENTINEL')
        last = osp.join(runner.work_dir, 'last_checkpoint')
        if (not sentinel or osp.exists(sentinel) or self.work_dir_part not in runner.work_dir
                or not osp.isfile(last)):
            return
        with open(last) as f:
            if osp.basename(f.read().strip()) != self.checkpoint:
                return
        with open(sentinel, 'w') as f:
            f.write(f'{runner.work_dir}: killed at the start of epoch {runner.epoch + 1}\n')
        os.killpg(os.getpgrp(), signal.SIGKILL)
