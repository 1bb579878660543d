"""``kill -9`` during checkpoint saves: ``tools/train.py`` runs (a checkpoint and its
``_merged`` twin every iteration) kill themselves (:mod:`fault_hooks`) at a point drawn from a
seeded generator — inside a write, between the renames of a save, or between saves — and are
resumed with ``--resume``, again and again, with ``max_keep_ckpts`` 1 and 3. The kill points are
counted calls, not wall-clock moments, so the test does the same on a fast or a loaded machine.

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

import pytest
import torch
from mmengine.config import Config

from durability_utils import options, tuned_config
from runner_utils import HANG_TIMEOUT, PY, ROOT

MAX_ITERS = 8


@pytest.fixture(scope='module')
def config(tmp_path_factory):
    """The tuned config plus the test-only kill hook (inert unless ``MMSSF_TEST_KILL_AT``)."""
    folder = tmp_path_factory.mktemp('cfg')
    base = tuned_config(folder)
    hooks = [dict(h) for h in Config.fromfile(base).get('custom_hooks', [])]
    path = os.path.join(str(folder), 'ssf_vit_killable.py')
    with open(path, 'w') as f:
        f.write(f'_base_ = {base!r}\n'
                "custom_imports = dict(imports=['mmssf', 'fault_hooks'], "
                'allow_failed_imports=False)\n'
                f'custom_hooks = {hooks + [dict(type="KillAtIteration")]!r}\n')
    return path


def _command(config, work, data, keep, resume):
    opts = options(data, f'train_cfg.max_iters={MAX_ITERS}',
                   f'default_hooks.checkpoint.max_keep_ckpts={keep}')
    return ([PY, 'tools/train.py', config, '--work-dir', str(work)]
            + (['--resume'] if resume else []) + ['--cfg-options'] + opts)


def _env(kill_at=None):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(
        [os.path.join(ROOT, 'tests'), os.environ.get('PYTHONPATH', '')]))
    env.pop('MMSSF_TEST_KILL_AT', None)
    if kill_at:
        env['MMSSF_TEST_KILL_AT'] = kill_at
    return env


def _saving(work) -> bool:
    try:
        return any('.tmp-' in n for n in os.listdir(work))
    except FileNotFoundError:
        return False


def draw_kill_point(rng):
    """Where the next run kills itself (:mod:`fault_hooks`), reached by construction: at its
    K-th fsync (3 of 4: a save under way — the bytes written, not yet renamed, or the folder
    fsync after a rename) or right after its K-th rename (the rest of the save undone), or
    before training iteration K (between saves). A save is about six fsyncs and three renames."""
    kind = rng.choice(['fsync', 'fsync', 'replace', 'iter'])
    return f'{kind}:{rng.randint(1, MAX_ITERS - 1 if kind == "iter" else 12)}'


def run_and_kill(cmd, log, kill_at):
    """Run ``cmd`` with the kill point ``kill_at``; True if it was killed there, False if it
    finished first (a resumed run may have fewer saves or iterations left than K)."""
    code = subprocess.run(cmd, cwd=ROOT, env=_env(kill_at), stdout=log,
                          stderr=subprocess.STDOUT, timeout=HANG_TIMEOUT).returncode
    assert code in (0, -signal.SIGKILL), f'{cmd} exited {code}; see the log'
    return code == -signal.SIGKILL


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
            killed = run_and_kill(_command(config, work, data, keep, resume=not first), log,
                                  draw_kill_point(rng))
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
                               stdout=log, stderr=subprocess.STDOUT, timeout=HANG_TIMEOUT,
                               env=_env())
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
                   capture_output=True, env=_env())
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
