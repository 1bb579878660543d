"""Tiny synthetic datasets in real on-disk formats (COCO, ADE20K) for demos and tests.

The names are imported from :mod:`mmssf.datasets.generate` on first access, so that
``python -m mmssf.datasets.generate`` does not find that module already imported.
"""
import importlib

__all__ = ['COCO_CLASSES', 'make_coco', 'make_ade20k']


def __getattr__(name):
    """Resolve the public names lazily from :mod:`.generate`."""
    if name in __all__:
        return getattr(importlib.import_module('.generate', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(list(globals()) + __all__)
