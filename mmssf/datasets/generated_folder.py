"""A dataset folder written once by a generator and reused afterwards.

A marker file (``.mmssf_dataset.json``) is written first with ``"complete": false`` and
rewritten with ``"complete": true`` as the very last step. A folder whose marker is complete and
records the same arguments is reused untouched; a folder with an incomplete or different marker
is regenerated (files the old marker listed but the new dataset does not have are removed); a
folder holding data but no marker was not written here, and is left alone with an error. The
generators of :mod:`mmssf.datasets.generate` (COCO, ADE20K) and
:mod:`mmssf.datasets.generate_classification` (VTAB-1k, FGVC) share these helpers.
"""
import json
import os
import os.path as osp
from typing import Callable, List, Optional, Sequence

import numpy as np
from PIL import Image

__all__ = ['MARKER', 'generate_once', 'save_jpeg', 'save_label_png', 'save_json']

MARKER = '.mmssf_dataset.json'
_FORMAT_VERSION = 1


def _read_marker(root: str) -> Optional[dict]:
    """The marker of ``root`` as a dict, or None when there is none (or it is unreadable)."""
    try:
        with open(osp.join(root, MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_marker(root: str, kind: str, params: dict, files: Sequence[str],
                  complete: bool) -> None:
    """Atomically (re)write the marker of ``root``."""
    marker = dict(generator='mmssf.datasets.generate', version=_FORMAT_VERSION, kind=kind,
                  params=params, complete=complete, files=sorted(files))
    tmp = osp.join(root, MARKER + '.tmp')
    with open(tmp, 'w') as f:
        json.dump(marker, f, indent=1)
    os.replace(tmp, osp.join(root, MARKER))


def _is_reusable(root: str, marker: Optional[dict], kind: str, params: dict) -> bool:
    """Whether ``marker`` describes a complete dataset of these arguments whose files exist."""
    return (marker is not None and marker.get('complete') is True
            and marker.get('version') == _FORMAT_VERSION and marker.get('kind') == kind
            and marker.get('params') == params
            and all(osp.isfile(osp.join(root, rel)) for rel in marker.get('files', [])))


def _check_not_foreign(root: str, subdirs: Sequence[str]) -> None:
    """Refuse to write over a dataset (non-empty ``subdirs``) that has no marker of ours."""
    for sub in subdirs:
        path = osp.join(root, sub)
        if osp.isdir(path) and os.listdir(path):
            raise FileExistsError(
                f'{path} already holds data that was not written by mmssf.datasets.generate '
                f'(no {MARKER}); refusing to overwrite it. Use an empty folder.')


def _remove_stale(root: str, old_files: Sequence[str], new_files: Sequence[str]) -> None:
    """Delete files an earlier generation wrote that the new dataset does not contain."""
    for rel in sorted(set(old_files) - set(new_files)):
        path = osp.join(root, rel)
        if osp.isfile(path):
            os.remove(path)


def generate_once(root: str, kind: str, params: dict, subdirs: Sequence[str],
                   write: Callable[[str], List[str]]) -> str:
    """Run ``write(root)`` (returning the relative paths written) unless ``root`` is reusable."""
    root = str(root)
    params = json.loads(json.dumps(params))  # tuples -> lists, as the marker stores them
    marker = _read_marker(root)
    if _is_reusable(root, marker, kind, params):
        return root
    if marker is None:
        _check_not_foreign(root, subdirs)
    old_files = marker.get('files', []) if marker else []
    os.makedirs(root, exist_ok=True)
    _write_marker(root, kind, params, old_files, complete=False)
    files = write(root)
    _remove_stale(root, old_files, files)
    _write_marker(root, kind, params, files, complete=True)
    return root


# ------------------------------------------------------------------------------ file writing
def save_jpeg(path: str, pixels: np.ndarray) -> None:
    """Save an (h, w, 3) float/uint8 array as a JPEG (clipped to 0..255)."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).save(path, quality=92)


def save_label_png(path: str, labels: np.ndarray) -> None:
    """Save an (h, w) uint8 label map as a single-channel ('L') PNG."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(labels.astype(np.uint8)).save(path)


def save_json(path: str, obj: dict) -> None:
    """Write ``obj`` as compact JSON (byte-identical for identical input)."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(obj, f, separators=(',', ':'))
