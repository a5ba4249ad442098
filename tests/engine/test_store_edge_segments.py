"""The feedback collection's segment settings (``engine.store.meta.AUX_SEGMENT_KB``).

A large decision log must not stall in optimizer merges: on Edge the feedback collection is created with an
indexing threshold and a max segment size of ``AUX_SEGMENT_KB`` (sealed segments never merge again), a store
made before gets them when it is opened, and the effect is checked at a small size (a few KB: thousands of
points) against Edge's defaults, which keep the log in one segment. qdrant-client asks a server for the same
settings (local mode keeps no optimizer settings, so the call itself is checked).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from engine.feedback import _PLACEHOLDER, Event, record_feedback
from engine.schema import FEEDBACK, USERS
from engine.settings import Settings
from engine.store import Point
from engine.store import edge as edge_mod
from engine.store.client import QdrantClientStore
from engine.store.edge import EdgeStore
from engine.store.meta import AUX_SEGMENT_KB

DIM = 4
_UNKNOWN = {"require_known": False, "update_model": False}


def _optimizers(root: Path, collection: str) -> dict[str, object] | None:
    """The optimizer settings Edge persisted for ``collection`` (its ``edge_config.json``)."""
    config = json.loads((root / collection / "edge_config.json").read_text())
    return config.get("optimizers")


def _open(path: Path) -> EdgeStore:
    return EdgeStore.open(Settings(store_path=path, progress=False))  # type: ignore[call-arg]


def _feedback_points(start: int, n: int) -> list[Point]:
    return [
        Point(str(uuid.UUID(int=i + 1)), _PLACEHOLDER, {"viewer_id": f"u{i % 50}", "candidate_id": f"u{i % 7}",
              "decision": "like", "ts": 0.0})
        for i in range(start, start + n)
    ]  # fmt: skip


def test_feedback_collection_is_created_with_the_segment_size(tmp_path: Path) -> None:
    store = _open(tmp_path)
    try:
        store.setup("enc", DIM)
    finally:
        store.close()
    opt = _optimizers(tmp_path, FEEDBACK)
    assert opt is not None
    assert (opt["indexing_threshold"], opt["max_segment_size"]) == (AUX_SEGMENT_KB, AUX_SEGMENT_KB)
    users = _optimizers(tmp_path, USERS)  # the searched collections keep Edge's defaults
    assert users is None or users.get("max_segment_size") is None


def test_a_store_made_before_opens_with_its_points_and_gets_the_segment_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:  # the code before AUX_SEGMENT_KB: Edge's default optimizers
        m.setattr(edge_mod, "_aux_optimizers", lambda: None)
        store = _open(tmp_path)
        try:
            store.setup("enc", DIM)
            record_feedback(store, [Event("a", "b", "like", 1.0), Event("b", "a", "pass", 2.0)], **_UNKNOWN)
        finally:
            store.close()
        old = _optimizers(tmp_path, FEEDBACK)
        assert old is None or old.get("max_segment_size") is None
    store = _open(tmp_path)
    try:
        assert store.count(FEEDBACK) == 2
        record_feedback(store, [Event("a", "c", "like", 3.0)], **_UNKNOWN)
        store.optimize()
        assert store.count(FEEDBACK) == 3
    finally:
        store.close()
    opt = _optimizers(tmp_path, FEEDBACK)
    assert opt is not None and opt["max_segment_size"] == AUX_SEGMENT_KB


@pytest.mark.parametrize("capped", [True, False])
def test_sealed_segments_stop_merging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capped: bool) -> None:
    """4 KB of 1-d vectors: ~1,000 points a segment. Five rounds of 1,200 points, each followed by ``optimize()``
    as a live store gets it: capped, every round seals a segment and none merges; with Edge's defaults the log
    stays one segment (every optimize re-copies it all, what stalled the 10 M lay)."""
    monkeypatch.setattr(edge_mod, "AUX_SEGMENT_KB", 4)
    if not capped:
        monkeypatch.setattr(edge_mod, "_aux_optimizers", lambda: None)
    store = _open(tmp_path)
    try:
        store.setup("enc", DIM)
        for r in range(5):
            store.upsert(FEEDBACK, _feedback_points(r * 1200, 1200))
            store.optimize()
        segments = store._shards[FEEDBACK].info().segments_count
        assert store.count(FEEDBACK) == 6_000
    finally:
        store.close()
    assert (segments >= 5) if capped else (segments <= 2), segments


def test_qdrant_client_asks_for_the_segment_size_for_feedback_only(tmp_path: Path) -> None:
    store = QdrantClientStore.embedded(Settings(store_path=tmp_path, store_backend="local"))
    made: dict[str, Any] = {}
    create = store._client.create_collection

    def spy(name: str, **kwargs: Any) -> Any:
        made[name] = kwargs.get("optimizers_config")
        return create(name, **kwargs)

    store._client.create_collection = spy  # type: ignore[method-assign, assignment]
    try:
        store.setup("enc", DIM)
    finally:
        store.close()
    feedback = made.pop(store.name(FEEDBACK))
    assert (feedback.indexing_threshold, feedback.max_segment_size) == (AUX_SEGMENT_KB, AUX_SEGMENT_KB)
    assert made and all(v is None for v in made.values())  # users, photos, META: the server's defaults


def test_an_erasure_rewrite_seals_the_log_as_it_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``finish_erasure`` copies every collection into a fresh shard; the feedback log is sealed along the way
    (one segment per ``AUX_SEGMENT_KB``), not held whole in one appendable segment and sealed once at the end."""
    monkeypatch.setattr(edge_mod, "AUX_SEGMENT_KB", 4)  # ~1,000 1-d points a segment
    store = _open(tmp_path)
    try:
        store.setup("enc", DIM)
        store.upsert(FEEDBACK, _feedback_points(0, 6_000))
        store.delete(FEEDBACK, [str(uuid.UUID(int=1))])
        store.begin_erasure()
        assert store.finish_erasure()
        assert store.count(FEEDBACK) == 5_999
        segments = store._shards[FEEDBACK].info().segments_count
    finally:
        store.close()
    assert segments >= 4, segments
