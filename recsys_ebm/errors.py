"""Exceptions the toolkit raises on purpose, so callers can tell them from bugs."""


class DataError(ValueError):
    """Bad input data: names the file, column and an offending value."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable; says where to put the files."""


class ModelFitError(RuntimeError):
    """Training diverged (NaN/inf loss or parameters); names the epoch."""


class MissingDependencyError(ImportError):
    """An optional extra is not installed; says which one and how to install it."""


class ConcurrentWriteError(RuntimeError):
    """Another process is writing the same model directory or export right now."""


class ModelFileError(ValueError):
    """A saved model or index is incomplete, corrupted or does not match its manifest."""


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used (unreachable, unsupported URI, ...); names the URI."""
