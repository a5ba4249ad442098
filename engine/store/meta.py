"""The META record: which encoder made the stored vectors, kept the same way on every backend.

META is a tiny collection (1-d vectors) holding one point whose payload names the encoder id and the
vector dimension; ``setup`` compares them with the encoder of the run so vectors of two encoders are
never mixed in one collection.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.errors import EncoderMismatch
from engine.schema import FEEDBACK, FEEDBACK_INDEXES, PHOTO_INDEXES, PHOTOS, USER_INDEXES, USERS
from engine.store.base import StoreInfo

# Fixed id of the single META point (any UUID works; it must never change).
META_POINT_ID = "00000000-0000-4000-8000-00000000a1a1"
META_DIM = 1
META_VECTOR = np.ones(META_DIM, dtype=np.float32)
SCHEMA_VERSION = 1

# The collections ``setup`` creates, with the payload indexes each gets (field -> "keyword" | "integer").
COLLECTION_INDEXES: dict[str, dict[str, str]] = {PHOTOS: PHOTO_INDEXES, USERS: USER_INDEXES}
# Collections of 1-d placeholder vectors (only filtered, never searched) that ``setup`` creates too. They hold
# no encoder's vectors, so a rebuild (another encoder) keeps them: logged decisions outlive an encoder.
AUX_INDEXES: dict[str, dict[str, str]] = {FEEDBACK: FEEDBACK_INDEXES}
# Their segment size, in Qdrant's unit (KB of vectors): with 1-d float32 vectors (4 bytes) 4,000 KB is ~1 M
# points. Both the indexing threshold (a segment past it is sealed: made immutable, memory-mapped) and the
# max segment size (segments merge only while their sum stays under it), so a sealed segment never merges
# again and an optimize copies at most the points written since the last seal. With the defaults (indexing
# threshold ~10 MB: 2.5 M points; merges capped at hundreds of MB of vectors, never reached at 1-d) laying
# 10 M decisions on Edge spent 795 s in the optimize that first sealed 3 M points, then over 12 min and
# 7.7 GB RSS merging two 3 M segments (docs/benchmarks.md, "Laying 10 M").
AUX_SEGMENT_KB = 4_000


def meta_payload(encoder_id: str, dim: int) -> dict[str, Any]:
    return {"encoder_id": encoder_id, "dim": int(dim), "schema_version": SCHEMA_VERSION}


def info_from_payload(payload: dict[str, Any] | None) -> StoreInfo | None:
    if not payload or "encoder_id" not in payload or "dim" not in payload:
        return None
    return StoreInfo(encoder_id=str(payload["encoder_id"]), dim=int(payload["dim"]))


def check_encoder(current: StoreInfo | None, encoder_id: str, dim: int, where: str) -> None:
    """Raise ``EncoderMismatch`` if ``current`` names another encoder id or dimension than the run's."""
    if current is None or (current.encoder_id == encoder_id and current.dim == dim):
        return
    raise EncoderMismatch(
        f"{where} holds vectors of encoder {current.encoder_id!r} (dim {current.dim}), "
        f"not of encoder {encoder_id!r} (dim {dim}); re-ingest with rebuild (--rebuild) to replace them"
    )
