"""``kill -9`` during checkpoint saves: ``tools/train.py`` runs (a checkpoint and its
``_merged`` twin every iteration) are killed at random moments right after a save began, or at
random times, and resumed with ``--resume``, again and again, with ``max_keep_ckpts`` 1 and 3.

After every kill: every file under a final name loads and verifies (no truncated file carries a
final name), ``last_checkpoint`` names a complete checkpoint, at most ``keep + 1`` checkpoints
exist. After the last, uninterrupted ``--resume``: the newest checkpoint and its ``_merged`` twin
load and exactly ``keep`` pairs are left; in the slow tier — the runs being exactly resumable —
the final weights also equal those of a run that was never killed.

The default tier kills a few times; ``-m slow`` runs the 24-kill tier.
"""
import os
import random
import shutil
import signal
import subprocess
import time

import pytest
import torch

from durability_utils import options, tuned_config
from runner_utils import PY, ROOT

MAX_ITERS = 8


@pytest.fixture(scope='module')
def config(tmp_path_factory):
    return tuned_config(tmp_path_factory.mktemp('cfg'))


def _command(config, work, data, keep, resume):
    opts = options(data, f'train_cfg.max_iters={MAX_ITERS}',
                   f'default_hooks.checkpoint.max_keep_ckpts={keep}')
    return ([PY, 'tools/train.py', config, '--work-dir', str(work)]
            + (['--resume'] if resume else []) + ['--cfg-options'] + opts)


def _start(cmd, log):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _saving(work) -> bool:
    try:
        return any('.tmp-' in n for n in os.listdir(work))
    except FileNotFoundError:
        return False


def run_and_kill(cmd, work, rng, log, mode):
    """Start ``cmd``; SIGKILL it ``mode='save'``: as soon as a temporary checkpoint file
    appears (a write is under way) or 0-40 ms later (the rest of the save: renames,
    ``last_checkpoint``, the twin, rotation), or ``mode='any'``: at a random time while it trains.
    Returns True if it was killed, False if it finished first."""
    proc = _start(cmd, log)
    try:
        if mode == 'save':
            saves_to_skip = rng.randrange(0, 4)
            seen = False
            while proc.poll() is None:
                now = _saving(work)
                if now and not seen:
                    if saves_to_skip == 0:  # now (inside the write), or later in the save
                        time.sleep(0 if rng.random() < 0.5 else rng.uniform(0, 0.04))
                        break
                    saves_to_skip -= 1
                seen = now
                time.sleep(0.0005)
        else:
            while proc.poll() is None and not os.path.isdir(work):
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=300) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def check_consistent(work, keep):
    """Invariants that must hold at any moment; returns the checkpoint last_checkpoint names."""
    from mmssf.fileio import is_temp_file, load_checkpoint_file
    names = [n for n in os.listdir(work) if n.endswith('.pth') and not is_temp_file(n)]
    for name in names:  # raises on a truncated / corrupted file under a final name
        load_checkpoint_file(os.path.join(work, name))
    mains = [n for n in names if not n.endswith('_merged.pth')]
    assert len(mains) <= keep + 1, sorted(names)
    last = os.path.join(work, 'last_checkpoint')
    if not os.path.exists(last):
        return None
    target = open(last).read().strip()
    assert os.path.isfile(target), f'last_checkpoint names {target!r}, which does not exist'
    return target


def kill_and_resume(tmp_path, config, data, keep, kills, seed):
    rng = random.Random(seed)
    work = tmp_path / f'keep{keep}'
    tried = survived = interrupted = 0
    with open(tmp_path / f'keep{keep}.log', 'ab') as log:
        first = True
        while tried < kills:
            mode = 'save' if rng.random() < 0.75 else 'any'
            killed = run_and_kill(_command(config, work, data, keep, resume=not first), work,
                                  rng, log, mode)
            first = False
            if not killed:  # finished before the kill: start over in a fresh folder
                shutil.rmtree(work)
                first = True
                continue
            tried += 1
            interrupted += _saving(work)  # a temporary file left: the kill cut a write short
            check_consistent(work, keep)
            survived += 1
        final = subprocess.run(_command(config, work, data, keep, resume=True), cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT, timeout=600,
                               env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert final.returncode == 0, (tmp_path / f'keep{keep}.log').read_text()[-3000:]
    newest = check_consistent(work, keep)
    assert newest == str(work / f'iter_{MAX_ITERS}.pth')
    names = sorted(n for n in os.listdir(work) if n.endswith('.pth'))
    expected = [f'iter_{i}{s}.pth' for i in range(MAX_ITERS - keep + 1, MAX_ITERS + 1)
                for s in ('', '_merged')]
    assert names == sorted(expected)
    print(f'keep={keep}: kills tried {tried}, survived {survived}, '
          f'{interrupted} of them cut a write short')
    return work, tried, survived, interrupted


@pytest.fixture(scope='module')
def reference(tmp_path_factory, config, folder_data):
    """The same training, never killed."""
    work = tmp_path_factory.mktemp('reference')
    subprocess.run(_command(config, work, folder_data, 1, resume=False), cwd=ROOT, check=True,
                   capture_output=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    return {k: torch.load(work / f'iter_{MAX_ITERS}{k}.pth', weights_only=True)['state_dict']
            for k in ('', '_merged')}


def _assert_equals_reference(work, reference):
    for suffix, expected in reference.items():
        got = torch.load(work / f'iter_{MAX_ITERS}{suffix}.pth', weights_only=True)['state_dict']
        assert got.keys() == expected.keys()
        for key in got:
            assert torch.equal(got[key], expected[key]), (suffix, key)


@pytest.mark.parametrize('keep,kills', [(1, 2), (3, 1)])
def test_kills_during_saves(tmp_path, config, folder_data, keep, kills):
    _, tried, survived, _ = kill_and_resume(tmp_path, config, folder_data, keep, kills, seed=keep)
    assert tried == survived == kills


@pytest.mark.long
@pytest.mark.parametrize('keep,kills', [(1, 12), (3, 12)])
def test_many_kills_during_saves(tmp_path, config, folder_data, reference, keep, kills):
    work, tried, survived, interrupted = kill_and_resume(tmp_path, config, folder_data, keep,
                                                         kills, seed=100 + keep)
    assert tried == survived == kills
    assert interrupted >= 1  # (the kills do land inside writes)
    _assert_equals_reference(work, reference)
