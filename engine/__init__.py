"""The serving core of profile-matcher: the records and the store seam over Qdrant, ``recommend()``, and what
learns from the logged decisions. Importable without torch: nothing under ``engine`` imports ``training``,
``ingestion``, ``evaluation`` or ``matcher`` (tests/engine/test_layout.py).

At the top, the API and the records: ``recommend`` (``recommend()``, stage 1), ``settings``, ``errors``,
``schema`` (collections, point ids, payload fields, ``Profile``), ``filters``, ``compatibility``, ``feedback``
(the decision log), ``likes`` (like histories and tastes), ``users`` (stats, erasure), ``redaction``. Below,
one subpackage per role, each with a docstring that maps it:

* ``store`` — the store seam and its backends (embedded Edge, qdrant-client local mode or a server);
* ``ranking`` — stage 2 of ``recommend()``: the askers, the matches shown, the photo-path maths, exposure;
* ``learned`` — the two-sided preference model: fitting, rebuilding, serving;
* ``reciprocity`` — each user's ``kth_sim`` and the passes that keep it exact.
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
