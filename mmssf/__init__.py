"""mmssf: parameter-efficient fine-tuning of Swin / ViT backbones for OpenMMLab."""
import os

from . import dependencies

if not os.environ.get('MMSSF_SKIP_VERSION_CHECK'):  # (a clear message, not a later crash)
    dependencies.check_versions()

from . import compat  # noqa: F401  (patches the pinned stack before anything else runs)
from .version import __version__

__all__ = ['__version__']
from . import engine, models, peft  # noqa: F401,E402  (register components)
