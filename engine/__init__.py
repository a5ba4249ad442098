"""The serving core of profile-matcher: schema, the store seam over Qdrant, filters, reranking, recommend().

Importable without torch: nothing under ``engine`` imports ``training``, ``ingestion`` or ``evaluation``
(the CLI entry point reaches them lazily, by name, only when their command runs).
"""

from __future__ import annotations

from engine.errors import (
    EncoderMismatch,
    EncoderUnavailable,
    InvalidInput,
    MatcherError,
    NoUserVector,
    StoreLocked,
    StoreUnavailable,
    UserNotFound,
)
from engine.settings import Settings

__all__ = [
    "EncoderMismatch",
    "EncoderUnavailable",
    "InvalidInput",
    "MatcherError",
    "NoUserVector",
    "Settings",
    "StoreLocked",
    "StoreUnavailable",
    "UserNotFound",
]
