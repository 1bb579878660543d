"""Checkpoint files: crash-consistent writes, and reads whose errors name the file and the fault.

Writes go to a temporary name in the destination folder (``.NAME.tmp-<pid>-<random>``), are
flushed and fsynced, then renamed over the final name (``os.replace``, atomic on POSIX) and the
folder is fsynced, so that a reader — or a resumed run after ``kill -9`` or a power cut — sees
either the previous complete file or the new complete one, never a truncated file under the
final name. A failed write (a full disk, a quota) removes its temporary file, leaves any
previous file of that name untouched and raises :class:`CheckpointWriteError` naming the path,
the bytes needed and the bytes free.

Reads (:func:`load_checkpoint_file`, and every mmengine local checkpoint load once mmssf is
imported, see :mod:`mmssf.compat`) keep ``torch.load(weights_only=True)`` and turn torch's
messages for empty, text, truncated or corrupted files into :class:`CheckpointFileError` naming
the file and what is wrong with it.
"""
import errno
import io
import os
import os.path as osp
import pickle
import uuid
import zipfile

import torch

from .checkpoint_errors import CheckpointFileError, CheckpointWriteError
from .integrity import verify_checkpoint

__all__ = ['CheckpointFileError', 'CheckpointWriteError', 'atomic_save', 'atomic_write_bytes',
           'atomic_write_text', 'explain_load_error', 'load_error', 'is_temp_file', 'load_checkpoint_file',
           'human_bytes']

TMP_MARK = '.tmp-'


def human_bytes(n: int) -> str:
    """``1234567`` -> ``'1.2 MiB (1,234,567 B)'``."""
    value, unit = float(n), 'B'
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if abs(value) < 1024 or unit == 'TiB':
            break
        value /= 1024
    return f'{n:,} B' if unit == 'B' else f'{value:.1f} {unit} ({n:,} B)'


def free_bytes(folder: str):
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def temp_path(path: str) -> str:
    """A fresh temporary name beside ``path`` (same folder, so the final rename is atomic)."""
    folder, name = osp.split(osp.abspath(path))
    return osp.join(folder, f'.{name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}')


def is_temp_file(name: str) -> bool:
    """True for the temporary names :func:`temp_path` makes (left behind only by a kill)."""
    base = osp.basename(name)
    return base.startswith('.') and TMP_MARK in base


def fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _write_error(path: str, needed: int, err: OSError) -> CheckpointWriteError:
    folder = osp.dirname(osp.abspath(path))
    free = free_bytes(folder)
    free_text = f'{human_bytes(free)} free' if free is not None else 'free space unknown'
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    what = 'the disk is full' if err.errno == errno.ENOSPC else (
        'the disk quota is exceeded' if err.errno == errno.EDQUOT else err.strerror or str(err))
    advice = ('free space there or point the work dir elsewhere' if full
              else 'check the folder and its permissions')
    return CheckpointWriteError(
        err.errno, f'could not write {path}: {what} (it needs {human_bytes(needed)}; '
        f'{free_text} in {folder}). Nothing was written under that name and any previous file of '
        f'that name is unchanged; {advice}')


def atomic_write_bytes(data, path: str) -> None:
    """Write ``data`` (bytes-like) to ``path`` so that ``path`` is never seen half written.

    Raises:
        CheckpointWriteError: the write failed; the temporary file is removed and a previous
            ``path`` is untouched.
    """
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    view = memoryview(data).cast('B')
    needed = view.nbytes
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        _remove_quietly(tmp)
        raise _write_error(path, needed, err) from err
    except BaseException:
        _remove_quietly(tmp)
        raise
    fsync_folder(folder)


def atomic_write_text(text: str, path: str) -> None:
    atomic_write_bytes(text.encode('utf-8'), path)


def atomic_save(obj, path: str) -> None:
    """``torch.save(obj, path)``, atomically (see :func:`atomic_write_bytes`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(buffer.getbuffer(), path)  # (no copy of the serialized bytes)


# -- reading ------------------------------------------------------------------------------------
_UNSAFE_MARKERS = ('Unsupported global', 'Unsupported class', 'GLOBAL', 'weights_only',
                   'Weights only load failed')


def _head(path: str, n: int = 64) -> bytes:
    try:
        with open(path, 'rb') as f:
            return f.read(n)
    except OSError:
        return b''


def _describe_start(head: bytes) -> str:
    text = head[:40]
    printable = all(32 <= b < 127 or b in (9, 10, 13) for b in text)
    if printable and text:
        return f'it is text, not a PyTorch checkpoint (starts with {text.decode()!r})'
    return f'it is not a PyTorch checkpoint (starts with bytes {head[:16]!r})'


def explain_load_error(path: str, err: BaseException):
    """A :class:`CheckpointFileError` saying why ``torch.load`` failed on ``path``, or None when
    the failure is not about the file's bytes (unsafe content, a missing file, memory ...)."""
    path = str(path)
    if isinstance(err, (FileNotFoundError, MemoryError, KeyboardInterrupt)):
        return None
    if isinstance(err, pickle.UnpicklingError) and any(m in str(err) for m in _UNSAFE_MARKERS) \
            and zipfile.is_zipfile(path):
        return None  # a readable file holding code-running objects: said by the caller
    try:
        size = osp.getsize(path)
    except OSError:
        return None
    head = _head(path)
    if size == 0:
        reason = ('it is empty (0 bytes): an interrupted write or a failed copy; use an earlier '
                  'checkpoint')
    elif head.startswith(b'PK\x03\x04'):
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = (f'it is truncated or corrupted ({size:,} bytes; the PyTorch zip archive cannot '
                  f'be read: {detail}); use an earlier checkpoint')
    elif head.startswith(b'\x80\x02'):
        reason = (f'it is a legacy (non-zip) PyTorch file that is truncated or corrupted '
                  f'({size:,} bytes): {type(err).__name__}: {err}')
    else:
        reason = _describe_start(head)
    return CheckpointFileError(f'cannot load {path}: {reason}')


def load_error(path: str, err: BaseException):
    """The clear error to raise for ``torch.load`` failing on ``path`` (damaged bytes, or a
    refused code-running pickle), or None when ``err`` should propagate as it is."""
    clear = explain_load_error(path, err)
    if clear is None and isinstance(err, pickle.UnpicklingError):
        clear = refused_error(path, err)
    return clear


def load_checkpoint_file(path: str, map_location='cpu', verify: bool = True):
    """``torch.load(path, weights_only=True)`` with errors that name the file.

    Raises:
        FileNotFoundError: no such file.
        CheckpointFileError: empty, text, truncated or corrupted (the digest mmssf records in
            checkpoints it writes does not match, see :mod:`mmssf.integrity`).
        pickle.UnpicklingError: the file holds objects that would run code (refused).
    """
    path = os.fspath(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} does not exist' if not osp.exists(path)
                                else f'{path} is not a file')
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001  (re-raised unless explained)
        clear = load_error(path, err)
        if clear is None:
            raise
        raise clear from None
    if verify:
        verify_checkpoint(checkpoint, path)
    return checkpoint


def refused_error(path: str, err: BaseException) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(
        f'refused to load {path}: it holds objects that are neither tensors nor plain data, and '
        f'unpickling them could run code. mmssf keeps torch.load\'s weights_only=True safe '
        f'loading; convert the file to a plain state dict of tensors from a source you trust. '
        f'Details: {err}')
