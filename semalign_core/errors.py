"""User-facing errors: one clear line, no traceback.

Every mistake a user can make (unknown model, missing data, bad parameter, offline hub id)
raises an :class:`ArtifactError` subclass whose message says what is wrong and how to fix it.
The CLI and the notebooks' first cell print ``str(err)`` only.
"""


class ArtifactError(Exception):
    """Base class of errors caused by input, configuration or environment (not by a bug)."""


class UnknownModelError(ArtifactError, KeyError):
    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return self.args[0] if self.args else "unknown model"


class OfflineError(ArtifactError):
    """A hub resource was asked for while the hub is unreachable or HF_HUB_OFFLINE=1."""


class ChecksumError(ArtifactError):
    """A file's sha256 does not match the expected value."""


class DataNotFoundError(ArtifactError, FileNotFoundError):
    """A benchmark file or split is missing; the message says where to put it."""


class IncompatibleModelsError(ArtifactError, ValueError):
    """Source and target cannot be paired (vocabulary mismatch, target deeper than source...)."""


class InvalidParameterError(ArtifactError, ValueError):
    """A notebook or function parameter has an invalid value."""
