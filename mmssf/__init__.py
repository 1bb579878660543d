"""mmssf: parameter-efficient fine-tuning of Swin / ViT backbones for OpenMMLab."""
from . import compat  # noqa: F401  (patches the pinned stack before anything else runs)
from .version import __version__

__all__ = ['__version__']
