"""Checkpoints written by ``mmssf.AtomicCheckpointHook`` (what ``tools/train.py`` uses): rotation
of ``X.pth`` with its ``X_merged.pth`` twin, exact resume with dropout / drop-path / random
flips, corrupted files refused on every load path, a full disk during training, and the twin of
the resumed checkpoint written again when missing or broken.

The runs are in-process Runners configured as ``tools/train.py`` configures them
(``durability_utils.build_runner``); ``tools/test.py`` / ``tools/train.py`` themselves run once
each, for their messages.
"""
import errno
import os

import pytest
import torch

from durability_utils import build_runner, final_names, load, options, train, tuned_config
from runner_utils import HANG_TIMEOUT, run_tool


@pytest.fixture(scope='module')
def config(tmp_path_factory):
    return tuned_config(tmp_path_factory.mktemp('cfg'))


@pytest.fixture(scope='module')
def full_run(tmp_path_factory, config, folder_data):
    """6 iterations uninterrupted, every checkpoint kept."""
    work = tmp_path_factory.mktemp('full')
    train(config, work, options(folder_data))
    return work


def _assert_same(a, b, what):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), what
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            _assert_same(a[k], b[k], f'{what}/{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f'{what}/{i}')
    else:
        assert a == b, what


# -- rotation -----------------------------------------------------------------------------------
@pytest.mark.parametrize('keep', [1, 2])
def test_rotation_removes_checkpoints_with_their_merged_twins(tmp_path, config, folder_data, keep):
    train(config, tmp_path, options(folder_data, f'default_hooks.checkpoint.max_keep_ckpts={keep}'))
    kept = [f'iter_{i}' for i in range(7 - keep, 7)]
    expected = sorted([f'{k}.pth' for k in kept] + [f'{k}_merged.pth' for k in kept]
                      + ['last_checkpoint'])
    assert final_names(tmp_path) == expected
    assert not [n for n in os.listdir(tmp_path) if '.tmp-' in n]
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_6.pth')
    ckpt = load(tmp_path / 'iter_6.pth')
    assert ckpt['message_hub']['runtime_info']['keep_ckpt_ids'] == list(range(7 - keep, 7))
    assert ckpt['meta']['payload_sha256'] and ckpt['rng_state']['world_size'] == 1
    assert load(tmp_path / 'iter_6_merged.pth')['meta']['payload_sha256']


# -- exact resume -------------------------------------------------------------------------------
def test_resume_is_bit_identical_with_dropout_drop_path_and_flips(tmp_path, config, folder_data,
                                                                 full_run):
    opts = options(folder_data)
    # interrupted after 2 iterations (checkpoint + validation there), resumed to 6
    train(config, tmp_path, opts + ['train_cfg.max_iters=2'])
    assert final_names(tmp_path)[-1] == 'last_checkpoint'
    train(config, tmp_path, opts, resume='auto')
    resumed, full = load(tmp_path / 'iter_6.pth'), load(full_run / 'iter_6.pth')
    _assert_same(resumed['state_dict'], full['state_dict'], 'state_dict')
    _assert_same(resumed['optimizer'], full['optimizer'], 'optimizer')
    _assert_same(resumed['rng_state'], full['rng_state'], 'rng_state')
    _assert_same(load(tmp_path / 'iter_6_merged.pth')['state_dict'],
                 load(full_run / 'iter_6_merged.pth')['state_dict'], 'merged')

    # control: the same resume without the saved generator states is not identical (so the
    # run above really depends on them: dropout and flips draw numbers)
    stripped = tmp_path / 'no_rng'
    stripped.mkdir()
    ckpt = load(tmp_path / 'iter_2.pth')
    del ckpt['rng_state']
    from mmssf.integrity import seal_checkpoint
    torch.save(seal_checkpoint(ckpt), stripped / 'iter_2.pth')
    train(config, stripped, opts, resume=stripped / 'iter_2.pth')
    differs = [k for k, v in load(stripped / 'iter_6.pth')['state_dict'].items()
               if not torch.equal(v, full['state_dict'][k])]
    assert differs


def test_resume_epoch_based_is_bit_identical(tmp_path, config, folder_data):
    epochs = tmp_path / 'epochs.py'
    epochs.write_text(f'_base_ = {config!r}\n'
                      "train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=3, "
                      'val_interval=1)\n'
                      "train_dataloader = dict(sampler=dict(type='DefaultSampler'))\n"
                      'default_hooks = dict(checkpoint=dict(by_epoch=True))\n')
    config, opts = str(epochs), options(folder_data)
    train(config, tmp_path / 'full', opts)
    train(config, tmp_path / 'part', opts + ['train_cfg.max_epochs=1'])
    train(config, tmp_path / 'part', opts, resume='auto')
    full, resumed = load(tmp_path / 'full' / 'epoch_3.pth'), load(tmp_path / 'part' / 'epoch_3.pth')
    _assert_same(resumed['state_dict'], full['state_dict'], 'state_dict')
    _assert_same(resumed['optimizer'], full['optimizer'], 'optimizer')


# -- corruption ---------------------------------------------------------------------------------
def _corrupt(src, dst):
    """``dst``: ``src`` with 4 KB of a tensor's bytes flipped (the zip stays readable)."""
    ckpt = load(src)
    weight = next(v for k, v in ckpt['state_dict'].items() if v.numel() * v.element_size() >= 4096)
    data = bytearray(open(src, 'rb').read())
    at = data.find(weight.contiguous().view(torch.uint8).numpy().tobytes())
    assert at > 0
    for i in range(at, at + 4096):
        data[i] ^= 0xFF
    dst.write_bytes(bytes(data))
    torch.load(dst, weights_only=True)  # torch alone would not notice


@pytest.mark.parametrize('how', ['load_from', 'resume', 'test'])
def test_corrupted_checkpoint_is_refused_naming_it(tmp_path, config, folder_data, full_run, how):
    from mmssf.integrity import CorruptCheckpointError
    bad = tmp_path / 'iter_4.pth'
    _corrupt(full_run / 'iter_4.pth', bad)
    opts = options(folder_data)
    if how == 'test':  # through the tool, for its message
        with pytest.raises(AssertionError) as err:
            run_tool(['tools/test.py', config, str(bad), '--work-dir', str(tmp_path / 't'),
                      '--cfg-options'] + opts)
        message = str(err.value)
    else:
        kw = dict(load_from=bad) if how == 'load_from' else dict(resume=bad)
        with pytest.raises(CorruptCheckpointError) as err:
            train(config, tmp_path / 'w', opts, **kw)
        message = str(err.value)
    assert f'{bad} is corrupted' in message and 'SHA-256' in message


# -- a full disk --------------------------------------------------------------------------------
def test_full_disk_during_training_keeps_the_last_checkpoint(tmp_path, config, folder_data,
                                                             monkeypatch):
    from mmssf import fileio
    from mmssf.fileio import CheckpointWriteError
    real_write = os.write

    def write(fd, data):  # the 3rd checkpoint finds the disk full
        if '.iter_3.pth.tmp-' in os.readlink(f'/proc/self/fd/{fd}'):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)
    monkeypatch.setattr(fileio.os, 'write', write)
    with pytest.raises(CheckpointWriteError) as err:
        train(config, tmp_path, options(folder_data, 'default_hooks.checkpoint.max_keep_ckpts=1'))
    message = str(err.value)
    assert 'iter_3.pth' in message and 'disk is full' in message and 'it needs' in message
    monkeypatch.undo()
    # iteration 2 and its twin are intact and named by last_checkpoint; nothing half written
    assert final_names(tmp_path) == ['iter_2.pth', 'iter_2_merged.pth', 'last_checkpoint']
    assert not [n for n in os.listdir(tmp_path) if '.tmp-' in n]
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_2.pth')
    from mmssf.fileio import load_checkpoint_file
    load_checkpoint_file(tmp_path / 'iter_2.pth')
    load_checkpoint_file(tmp_path / 'iter_2_merged.pth')
    # and the run resumes from it
    train(config, tmp_path, options(folder_data, 'train_cfg.max_iters=3',
                                    'default_hooks.checkpoint.max_keep_ckpts=1'), resume='auto')
    assert final_names(tmp_path) == ['iter_3.pth', 'iter_3_merged.pth', 'last_checkpoint']


# -- the merged twin on resume ------------------------------------------------------------------
@pytest.mark.parametrize('damage', ['missing', 'truncated'])
def test_resume_writes_a_missing_or_broken_twin_again(tmp_path, config, folder_data, full_run,
                                                      damage):
    work = tmp_path / 'w'
    work.mkdir()
    for name in ('iter_4.pth', 'iter_4_merged.pth'):
        (work / name).write_bytes((full_run / name).read_bytes())
    (work / 'last_checkpoint').write_text(str(work / 'iter_4.pth'))
    twin = work / 'iter_4_merged.pth'
    if damage == 'missing':
        twin.unlink()
    else:
        twin.write_bytes(twin.read_bytes()[:1000])
    runner = build_runner(config, work, options(folder_data, 'train_cfg.max_iters=4'),
                          resume='auto')
    runner.train()  # (nothing left to train: before_train repairs, then the loop ends)
    rebuilt = load(twin)
    _assert_same(rebuilt['state_dict'], load(full_run / 'iter_4_merged.pth')['state_dict'],
                 'merged')
    assert rebuilt['meta']['source_checkpoint'] == 'iter_4.pth'
    assert rebuilt['meta']['iter'] == 4


# -- two processes ------------------------------------------------------------------------------
def _dist_train(config, work, opts, resume=False):
    import socket
    import subprocess
    import sys

    from runner_utils import ROOT
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PORT=str(port), PYTHON=sys.executable, OMP_NUM_THREADS='1')
    result = subprocess.run(['bash', 'tools/dist_train.sh', config, '2', '--work-dir', str(work)]
                            + (['--resume'] if resume else []) + ['--cfg-options'] + opts,
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


@pytest.mark.long
def test_resume_with_two_processes_restores_each_ranks_generators(tmp_path, config, folder_data):
    opts = options(folder_data, 'train_cfg.max_iters=4', 'train_dataloader.batch_size=2')
    _dist_train(config, tmp_path / 'full', opts)
    _dist_train(config, tmp_path / 'part', opts + ['train_cfg.max_iters=2'])
    _dist_train(config, tmp_path / 'part', opts, resume=True)
    full, resumed = load(tmp_path / 'full' / 'iter_4.pth'), load(tmp_path / 'part' / 'iter_4.pth')
    assert full['rng_state']['world_size'] == 2
    _assert_same(resumed['state_dict'], full['state_dict'], 'state_dict')
    _assert_same(resumed['optimizer'], full['optimizer'], 'optimizer')
    _assert_same(resumed['rng_state'], full['rng_state'], 'rng_state')


# -- a real small file system -------------------------------------------------------------------
@pytest.mark.long
def test_full_small_file_system(tmp_path, config, folder_data, full_run):
    """Checkpoints into a tmpfs (mounted in a user namespace) that holds two checkpoint pairs
    and half of a third: the third save fails clearly and the second stays intact."""
    import shlex
    import shutil
    import subprocess
    import sys

    from runner_utils import ROOT
    if shutil.which('unshare') is None or subprocess.run(
            ['unshare', '-rm', 'true'], capture_output=True).returncode != 0:
        pytest.skip('user namespaces (unshare -rm) are not available')
    x, merged = (os.path.getsize(full_run / n) for n in ('iter_1.pth', 'iter_1_merged.pth'))
    mount, copy, work = tmp_path / 'small', tmp_path / 'copy', tmp_path / 'w'
    mount.mkdir()
    copy.mkdir()
    train_cmd = [sys.executable, 'tools/train.py', config, '--work-dir', str(work),
                 '--cfg-options'] + options(folder_data,
                                            f'default_hooks.checkpoint.out_dir={mount}')
    script = (f'mount -t tmpfs -o size={2 * (x + merged) + x // 2} tmpfs {mount} && '
              f'{shlex.join(train_cmd)}; echo "rc=$?"; cp -a {mount}/w/. {copy}/')
    result = subprocess.run(['unshare', '-rm', 'sh', '-c', script], cwd=ROOT, text=True,
                            capture_output=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    output = result.stdout + result.stderr
    assert 'rc=1' in result.stdout, output[-3000:]
    assert 'Traceback' not in output
    assert f'could not write {mount}/w/iter_3.pth: the disk is full (it needs' in output
    assert sorted(os.listdir(copy)) == ['iter_1.pth', 'iter_1_merged.pth', 'iter_2.pth',
                                        'iter_2_merged.pth']
    from mmssf.fileio import load_checkpoint_file
    for name in os.listdir(copy):
        load_checkpoint_file(copy / name)
    assert (work / 'last_checkpoint').read_text() == f'{mount}/w/iter_2.pth'


# -- best checkpoints ---------------------------------------------------------------------------
def test_save_best_writes_the_new_best_before_removing_the_old(tmp_path, config, folder_data,
                                                              monkeypatch):
    from mmengine.evaluator import BaseMetric
    from mmengine.registry import METRICS

    from mmssf.engine.atomic_checkpoint import AtomicLocalBackend

    @METRICS.register_module(name='DurabilityIncreasingScore', force=True)
    class IncreasingScore(BaseMetric):  # a better score at every validation
        calls = 0

        def process(self, data_batch, data_samples):
            self.results.append(0)

        def compute_metrics(self, results):
            IncreasingScore.calls += 1
            return {'score': float(IncreasingScore.calls)}

    best = tmp_path / 'best.py'
    best.write_text(f'_base_ = {config!r}\n'
                    "val_evaluator = dict(_delete_=True, type='DurabilityIncreasingScore')\n"
                    "default_hooks = dict(checkpoint=dict(save_best='score', rule='greater'))\n")
    seen, real_put = [], AtomicLocalBackend.put

    def put(self, obj, filepath):
        if os.path.basename(str(filepath)).startswith('best_'):
            seen.append((os.path.basename(str(filepath)),
                         sorted(n for n in os.listdir(tmp_path / 'w') if n.startswith('best_'))))
        return real_put(self, obj, filepath)
    monkeypatch.setattr(AtomicLocalBackend, 'put', put)
    train(str(best), tmp_path / 'w', options(folder_data))
    assert [name for name, _ in seen] == [f'best_score_iter_{i}.pth' for i in (2, 4, 6)]
    assert seen[1][1] == ['best_score_iter_2.pth'] and seen[2][1] == ['best_score_iter_4.pth']
    assert sorted(n for n in os.listdir(tmp_path / 'w') if n.startswith('best_')) == \
        ['best_score_iter_6.pth']
