"""Exception types of geoplm.

Every error names the file, entry or configuration key it is about and the reason, so that a failed
Snakemake job's log says what to fix without a traceback being read.
"""

from __future__ import annotations


class GeoplmError(Exception):
    """Base class of every error geoplm raises on bad input."""


class ConfigError(GeoplmError):
    """The workflow configuration is invalid; the message names the key (e.g. ``models.gearnet.hidden_dims``).

    Args:
        message: the key path and the reason.
        key: the key path as its parts (``("models", "gearnet", "hidden_dims")``), when known: it lets
            :func:`geoplm.config.locate` find the config file and line that set the key.
    """

    def __init__(self, message: str, key: tuple | None = None):
        super().__init__(message)
        self.key = tuple(key) if key is not None else None


class ChecksumError(GeoplmError):
    """A file's SHA-256 differs from the expected one; the message names the file and both digests."""


class DownloadError(GeoplmError):
    """A source could be found neither in the mirror nor at its URL; the message names both."""


class StructureError(GeoplmError):
    """A structure file cannot be turned into residue records.

    Args:
        path: the structure file.
        reason: why, in words (e.g. ``"truncated gzip stream"``, ``"no protein chain"``).
    """

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class EmbeddingError(GeoplmError):
    """A protein language model checkpoint or sequence cannot be embedded; the message names which."""
