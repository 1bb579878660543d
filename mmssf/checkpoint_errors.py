"""The errors mmssf raises for checkpoint files, in a module of their own so that the modules
that raise them (:mod:`mmssf.fileio`, :mod:`mmssf.integrity`) import it and not each other."""

__all__ = ['CheckpointFileError', 'CheckpointWriteError', 'CorruptCheckpointError',
           'WeightDownloadError']


class CheckpointFileError(RuntimeError):
    """A checkpoint file cannot be read: empty, not a checkpoint, truncated or corrupted."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, permissions ...); nothing was left
    under the final name and a previous file of that name is unchanged."""


class CorruptCheckpointError(CheckpointFileError):
    """A checkpoint's tensors differ from the digest recorded when it was written."""


class WeightDownloadError(CheckpointFileError):
    """Weights named by URL could not be downloaded (offline, refused, timed out); the message
    says which config key to point at a local file."""

    def __init__(self, url: str, message: str, reason: str = None):
        super().__init__(message)
        self.url = url
        self.reason = reason or message
