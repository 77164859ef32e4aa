"""Exceptions raised for user mistakes: each message says what was wrong and what to do."""


class ClearvaeError(Exception):
    """Base class of every error clearvae raises on purpose."""


class ConfigError(ClearvaeError, ValueError):
    """A configuration key, value or combination is invalid."""


class DataError(ClearvaeError, ValueError):
    """An input image, dataset or data file cannot be used."""


class ModelFileError(ClearvaeError, ValueError):
    """A model or checkpoint file is corrupt, foreign, or of the wrong kind or version."""


class TrainingError(ClearvaeError, RuntimeError):
    """Training cannot go on (diverged, replicas out of sync, nothing to resume)."""
