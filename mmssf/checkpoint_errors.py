"""The errors mmssf raises for checkpoint files, in a module of their own so that the modules
that raise them (:mod:`mmssf.fileio`, :mod:`mmssf.integrity`) import it and not each other."""

__all__ = ['CheckpointFileError', 'CheckpointWriteError', 'CorruptCheckpointError']


class CheckpointFileError(RuntimeError):
    """A checkpoint file cannot be read: empty, not a checkpoint, truncated or corrupted."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, permissions ...); nothing was left
    under the final name and a previous file of that name is unchanged."""


class CorruptCheckpointError(CheckpointFileError):
    """A checkpoint's tensors differ from the digest recorded when it was written."""
