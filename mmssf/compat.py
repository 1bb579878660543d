"""Fixes for what the pinned OpenMMLab stack gets wrong on current torch / numpy.

Applied once when :mod:`mmssf` is imported. Each fix is tested in ``tests/test_compat.py`` by a
test that fails without it.

1. Resume under ``torch.load(weights_only=True)`` (torch >= 2.6 default). mmengine 0.10.7 writes
   checkpoints whose message hub holds ``HistoryBuffer`` objects and numpy arrays / scalars, which
   the safe unpickler refuses, so ``--resume`` dies. We allowlist exactly those data-only types
   (``torch.serialization.add_safe_globals``); safe loading stays on for every file, so a crafted
   checkpoint that would run code is still refused, with an error naming the file.
   mmengine's ``HistoryBuffer.__getstate__`` also pickles its statistics functions
   (``getattr(HistoryBuffer, 'min')``): allowing ``getattr`` would allow anything, so instead the
   buffer's pickled state leaves them out (they are class-level and registered at import).
2. Loads that explain themselves. torch reports an empty, text or truncated ``.pth`` as a bare
   ``EOFError`` / ``KeyError`` / zip error without the file name, and loads flipped tensor bytes
   silently. mmengine's local loader is wrapped so that these are errors naming the file and the
   fault, and the digest mmssf records in its checkpoints is verified (:mod:`mmssf.fileio`,
   :mod:`mmssf.integrity`).
3. Offline starts. A stock config's pretrained weights are a URL; offline, mmengine's loader
   raises a bare ``URLError``. It becomes an error naming the URL and the config key to point at
   a local file (:mod:`mmssf.download`).
4. setuptools' "pkg_resources is deprecated" warning, printed each time mmengine looks up a
   ``pkg::`` base config, is silenced (the user cannot act on it).
5. mmengine logs one line per parameter when a model initialises (``name - torch.Size(...):
   Initialized by ...``, hundreds for a ViT-B): they stay in the log file and leave the
   terminal (the console handlers of every ``MMLogger`` skip them).
"""
import functools
import logging
import warnings

import numpy as np
import torch


def _numpy_safe_globals():
    """The numpy globals an mmengine checkpoint pickles (arrays, dtypes, scalars)."""
    multiarray = getattr(np, '_core', None) or np.core
    found = [multiarray.multiarray._reconstruct, multiarray.multiarray.scalar, np.ndarray, np.dtype]
    for name in ('Float64DType', 'Float32DType', 'Float16DType', 'Int64DType', 'Int32DType',
                 'Int16DType', 'Int8DType', 'UInt8DType', 'BoolDType'):
        dtype_cls = getattr(getattr(np, 'dtypes', None), name, None)
        if dtype_cls is not None:
            found.append(dtype_cls)
    return found


def allow_mmengine_checkpoint_types() -> None:
    from mmengine.logging import HistoryBuffer
    torch.serialization.add_safe_globals([HistoryBuffer] + _numpy_safe_globals())


def _history_buffer_getstate(self):
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    return state


def pickle_history_buffer_without_functions() -> None:
    from mmengine.logging import HistoryBuffer
    HistoryBuffer.__getstate__ = _history_buffer_getstate


def explain_refused_checkpoints() -> None:
    """Make mmengine's local checkpoint loader say clearly why a file is refused (unsafe,
    empty, text, truncated, corrupted: :mod:`mmssf.fileio`) and verify the tensor digest mmssf
    records in the checkpoints it writes (:mod:`mmssf.integrity`), naming the file."""
    from mmengine.runner import checkpoint as ckpt_module

    from .fileio import load_error
    from .integrity import verify_checkpoint
    loader = ckpt_module.CheckpointLoader
    original = ckpt_module.load_from_local
    if getattr(original, '_mmssf_wrapped', False):
        return

    @functools.wraps(original)
    def load_from_local(filename, map_location):
        try:
            checkpoint = original(filename, map_location)
        except Exception as err:  # noqa: BLE001  (re-raised unless explained)
            clear = load_error(filename, err)
            if clear is None:
                raise
            raise clear from None
        verify_checkpoint(checkpoint, filename)
        return checkpoint

    load_from_local._mmssf_wrapped = True
    ckpt_module.load_from_local = load_from_local
    _swap_scheme_loaders(loader, original, load_from_local)


def _swap_scheme_loaders(loader, original, wrapper) -> None:
    """Point every ``CheckpointLoader`` scheme registered with ``original`` at ``wrapper`` (the
    loader table holds the functions themselves, not their module names)."""
    for prefix in list(loader._schemes):
        if loader._schemes[prefix] is original:
            loader._schemes[prefix] = wrapper


def explain_failed_downloads() -> None:
    """Make a failed weight download (offline: a bare ``URLError`` from deep inside model
    building) a :class:`~mmssf.download.WeightDownloadError` naming the URL and how to point
    the config at a local file. mmengine's ``open-mmlab://``, ``torchvision://`` and ``mmcls://``
    loaders call ``load_from_http`` through the module, so one wrapper covers them all."""
    from mmengine.runner import checkpoint as ckpt_module

    from .download import DOWNLOAD_ERRORS, download_error
    loader = ckpt_module.CheckpointLoader
    original = ckpt_module.load_from_http
    if getattr(original, '_mmssf_wrapped', False):
        return

    @functools.wraps(original)
    def load_from_http(filename, *args, **kwargs):
        try:
            return original(filename, *args, **kwargs)
        except DOWNLOAD_ERRORS as err:
            raise download_error(filename, err) from err

    load_from_http._mmssf_wrapped = True
    ckpt_module.load_from_http = load_from_http
    _swap_scheme_loaders(loader, original, load_from_http)


def silence_pkg_resources_warning() -> None:
    """mmengine finds ``mmdet::`` / ``mmseg::`` base configs through ``pkg_resources`` and
    reloads it on each lookup; setuptools warns that the API is deprecated, once per reload
    (up to four times per tool run): nothing a user can act on."""
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)


class _NoInitLines(logging.Filter):
    """Drops mmengine's per-parameter init records (``BaseModule.init_weights`` logs
    ``'\\n<name> - torch.Size([...]): \\n<how it was initialised>'``)."""

    def filter(self, record):
        msg = record.getMessage()
        return not (msg.startswith('\n') and ' - torch.Size(' in msg)


def init_lines_to_file_only() -> None:
    """Every ``MMLogger`` created from now on keeps the per-parameter init lines off its
    console handlers (its log file still has them)."""
    from mmengine.logging import MMLogger
    original = MMLogger.__init__
    if getattr(original, '_mmssf_wrapped', False):
        return

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        for handler in self.handlers:
            if type(handler) is logging.StreamHandler:  # (not its FileHandler subclass)
                handler.addFilter(_NoInitLines())

    __init__._mmssf_wrapped = True
    MMLogger.__init__ = __init__
    for name in list(MMLogger._instance_dict):  # (loggers that exist already)
        for handler in MMLogger._instance_dict[name].handlers:
            if type(handler) is logging.StreamHandler and not any(
                    isinstance(f, _NoInitLines) for f in handler.filters):
                handler.addFilter(_NoInitLines())


def apply_all() -> None:
    silence_pkg_resources_warning()
    init_lines_to_file_only()
    allow_mmengine_checkpoint_types()
    pickle_history_buffer_without_functions()
    explain_refused_checkpoints()
    explain_failed_downloads()


apply_all()
