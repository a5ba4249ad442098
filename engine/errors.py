"""One small error hierarchy. The CLI turns any ``MatcherError`` into a one-line message and exit code 2.

A ``ConfigError`` (bad ``MATCHER_*`` value) exits with 3 instead, so a script can tell a setting to fix
from a store that does not answer (2) and from ingest's "some input rejected" (1).
"""

from __future__ import annotations

CONFIG_ERROR_EXIT = 3


class MatcherError(Exception):
    """Base of every error the product raises on purpose."""


class InvalidInput(MatcherError, ValueError):
    """Bad input from the outside world: a file, a metadata row, a field, an argument.

    The message names the file, row or field.
    """


class UserNotFound(MatcherError, KeyError):
    """No user with this id is stored."""

    def __init__(self, user_id: str) -> None:
        super().__init__(user_id)
        self.user_id = user_id

    def __str__(self) -> str:
        return f"user {self.user_id!r} is not in the store"


class NoUserVector(MatcherError):
    """The user is known but has no vector (no valid photo was stored)."""


class StoreUnavailable(MatcherError):
    """The vector store cannot be reached or keeps failing."""


class StoreNotFound(StoreUnavailable):
    """A command that only reads (or deletes from) a store was pointed at a folder that does not exist."""


class StoreLocked(StoreUnavailable):
    """Another process holds the embedded store's folder."""


class ConfigError(MatcherError):
    """A ``MATCHER_*`` setting has a value that is not allowed. The CLI exits with ``CONFIG_ERROR_EXIT`` (3)."""


class EncoderMismatch(MatcherError):
    """Vectors of one encoder would be mixed with vectors of another encoder or dimension."""


class EncoderUnavailable(MatcherError):
    """The encoder cannot be loaded here (not found offline, needs a GPU feature this machine lacks, ...)."""
