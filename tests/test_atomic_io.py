"""Checkpoint files: atomic writes, a full disk, the tensor digest and clear load errors
(:mod:`mmssf.fileio`, :mod:`mmssf.integrity`, the wrapped mmengine loader of :mod:`mmssf.compat`).
"""
import errno
import os
import pickle

import pytest
import torch

import mmssf  # noqa: F401  (wraps mmengine's local checkpoint loader)
from mmssf import fileio
from mmssf.fileio import (CheckpointFileError, CheckpointWriteError, atomic_save,
                          load_checkpoint_file)
from mmssf.integrity import (DIGEST_KEY, CorruptCheckpointError, payload_sha256, seal_checkpoint,
                             verify_checkpoint)


def _checkpoint(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {'meta': {'epoch': 1},
            'state_dict': {'a.weight': torch.randn(64, 64, generator=gen),
                           'a.bias': torch.randn(64, generator=gen),
                           'n.num_batches_tracked': torch.tensor(3)},
            'optimizer': {'state': {0: {'exp_avg': torch.randn(64, generator=gen)}},
                          'param_groups': [{'lr': 0.1, 'params': [0]}]}}


def _mmengine_load(path):
    from mmengine.runner import CheckpointLoader
    return CheckpointLoader.load_checkpoint(str(path), map_location='cpu')


def _flip_bytes_in_tensor(path, tensor):
    """Flip the bytes of ``tensor``'s data inside the saved file (found by its content)."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
    at = data.find(raw)
    assert at > 0
    for i in range(at, at + 4096 if len(raw) >= 4096 else at + len(raw)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# -- digest -------------------------------------------------------------------------------------
def test_digest_covers_every_tensor_outside_meta():
    ckpt = _checkpoint()
    base = payload_sha256(ckpt)
    assert payload_sha256(_checkpoint()) == base  # deterministic
    changed = _checkpoint()
    changed['optimizer']['state'][0]['exp_avg'][5] += 1e-3
    assert payload_sha256(changed) != base
    changed = _checkpoint()
    changed['state_dict']['a.bias'] = changed['state_dict']['a.bias'].double()
    assert payload_sha256(changed) != base  # dtype counts
    changed = _checkpoint()
    changed['meta']['note'] = torch.ones(3)  # meta is not covered (it records the digest)
    assert payload_sha256(changed) == base


def test_digest_survives_a_save_load_round_trip(tmp_path):
    path = tmp_path / 'x.pth'
    atomic_save(seal_checkpoint(_checkpoint()), path)
    loaded = torch.load(path, weights_only=True)
    assert loaded['meta'][DIGEST_KEY] == payload_sha256(loaded)
    assert verify_checkpoint(loaded, str(path)) is True
    assert verify_checkpoint(_checkpoint(), 'plain') is False  # no digest: nothing to verify


@pytest.mark.parametrize('loader', ['mmssf', 'mmengine'])
def test_flipped_bytes_are_refused_naming_the_file(tmp_path, loader):
    path = tmp_path / 'epoch_1.pth'
    ckpt = seal_checkpoint(_checkpoint())
    torch.save(ckpt, path)
    _flip_bytes_in_tensor(path, ckpt['state_dict']['a.weight'])
    torch.load(path, weights_only=True)  # torch itself loads it silently
    load = load_checkpoint_file if loader == 'mmssf' else _mmengine_load
    with pytest.raises(CorruptCheckpointError, match='is corrupted') as err:
        load(path)
    assert str(path) in str(err.value)


# -- atomic writes ------------------------------------------------------------------------------
def test_atomic_save_leaves_no_temporary_file(tmp_path):
    path = tmp_path / 'sub' / 'x.pth'
    atomic_save(_checkpoint(), path)
    assert sorted(os.listdir(path.parent)) == ['x.pth']
    assert torch.equal(torch.load(path, weights_only=True)['state_dict']['a.bias'],
                       _checkpoint()['state_dict']['a.bias'])


def _disk_full_after(monkeypatch, budget):
    """``os.write`` fails with ENOSPC once ``budget`` bytes went through it."""
    real_write, left = os.write, [budget]

    def write(fd, data):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, bytes(memoryview(data)[:left[0]]))
        left[0] -= n
        return n
    monkeypatch.setattr(fileio.os, 'write', write)


def test_full_disk_keeps_the_previous_file_and_says_what_is_needed(tmp_path, monkeypatch):
    path = tmp_path / 'epoch_1.pth'
    atomic_save(seal_checkpoint(_checkpoint(0)), path)
    before = path.read_bytes()
    _disk_full_after(monkeypatch, 10_000)
    with pytest.raises(CheckpointWriteError) as err:
        atomic_save(seal_checkpoint(_checkpoint(1)), path)
    message = str(err.value)
    assert err.value.errno == errno.ENOSPC
    assert str(path) in message and 'disk is full' in message and 'it needs' in message
    assert 'free in' in message and 'unchanged' in message
    monkeypatch.undo()
    assert path.read_bytes() == before  # previous file intact
    assert os.listdir(tmp_path) == ['epoch_1.pth']  # no temporary file left behind
    load_checkpoint_file(path)


def test_write_error_other_than_full_disk(tmp_path):
    folder = tmp_path / 'ro'
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip('running as root: permissions are not enforced')
        with pytest.raises(CheckpointWriteError, match='could not write .*ro/x.pth'):
            atomic_save({'x': torch.zeros(1)}, folder / 'x.pth')
    finally:
        folder.chmod(0o700)


# -- clear load errors --------------------------------------------------------------------------
def _bad_files(tmp_path):
    good = tmp_path / 'good.pth'
    torch.save(_checkpoint(), good)
    data = good.read_bytes()
    files = {
        'empty': (b'', 'is empty'),
        'text': (b'hello, this is not a checkpoint\n', 'is text, not a PyTorch checkpoint'),
        'truncated': (data[:len(data) // 2], 'is truncated or corrupted'),
        'html': (b'<!DOCTYPE html><html>404</html>', 'is text'),
        'binary': (bytes(range(7, 200)), 'is not a PyTorch checkpoint'),
    }
    out = {}
    for name, (content, expected) in files.items():
        path = tmp_path / f'{name}.pth'
        path.write_bytes(content)
        out[name] = (path, expected)
    return out


@pytest.mark.parametrize('loader', ['mmssf', 'mmengine'])
def test_bad_files_get_errors_naming_the_file_and_the_fault(tmp_path, loader):
    load = load_checkpoint_file if loader == 'mmssf' else _mmengine_load
    for name, (path, expected) in _bad_files(tmp_path).items():
        with pytest.raises(CheckpointFileError) as err:
            load(path)
        assert str(path) in str(err.value) and expected in str(err.value), (name, str(err.value))


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_unsafe_file_is_refused_naming_the_file(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'x': _RunsCode()}, path)
    with pytest.raises(pickle.UnpicklingError, match=f'refused to load {path}'):
        load_checkpoint_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth does not exist'):
        load_checkpoint_file(tmp_path / 'nope.pth')


# -- publish_model.py ---------------------------------------------------------------------------
def _publish_tool():
    import importlib.util
    import os.path as osp

    from runner_utils import ROOT
    path = osp.join(ROOT, 'tools/model_converters/publish_model.py')
    spec = importlib.util.spec_from_file_location('publish_model', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_publish_names_the_file_after_its_sha256_and_check_verifies_it(tmp_path, capsys):
    import hashlib
    tool = _publish_tool()
    src = tmp_path / 'epoch_1_merged.pth'
    atomic_save(seal_checkpoint(_checkpoint()), src)
    final = tool.publish(str(src), str(tmp_path / 'ssf_vit.pth'))
    sha = hashlib.sha256(open(final, 'rb').read()).hexdigest()
    assert final == str(tmp_path / f'ssf_vit-{sha[:8]}.pth')
    published = load_checkpoint_file(final)  # (its own digest verifies)
    assert sorted(published) == ['meta', 'state_dict']
    assert published['meta']['epoch'] == 1
    tool.main(['--check', final])
    assert 'OK' in capsys.readouterr().out

    data = bytearray(open(final, 'rb').read())
    data[len(data) // 2] ^= 0xFF
    open(final, 'wb').write(bytes(data))
    with pytest.raises(SystemExit, match=f'{final} is corrupted or not the published file'):
        tool.main(['--check', final])
