"""Datasets: the VTAB-1k and FGVC readers (registered, ``type='mmssf.VTAB1k'`` /
``'mmssf.FGVC'``) and tiny synthetic datasets in real on-disk formats (COCO, ADE20K, VTAB-1k,
FGVC) for demos and tests.

The generator names are imported from :mod:`mmssf.datasets.generate` on first access, so that
``python -m mmssf.datasets.generate`` does not find that module already imported.
"""
import importlib

from .fgvc import FGVC, FGVC_DATASETS, FGVC_SPLITS, read_fgvc_split
from .vtab import (VTAB1K_GROUPS, VTAB1K_SPLITS, VTAB1K_TASKS, VTAB1k, read_vtab1k_list,
                   vtab1k_task)

_GENERATED = {'COCO_CLASSES': 'generate', 'make_coco': 'generate', 'make_ade20k': 'generate',
              'make_vtab1k': 'generate_classification', 'make_fgvc': 'generate_classification'}
__all__ = ['FGVC', 'FGVC_DATASETS', 'FGVC_SPLITS', 'read_fgvc_split', 'VTAB1k',
           'VTAB1K_GROUPS', 'VTAB1K_SPLITS', 'VTAB1K_TASKS', 'read_vtab1k_list',
           'vtab1k_task'] + list(_GENERATED)


def __getattr__(name):
    """Resolve the generator names lazily."""
    if name in _GENERATED:
        return getattr(importlib.import_module(f'.{_GENERATED[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(list(globals()) + __all__)
