"""bench/rebuild.py lays down the feedback store ``record_feedback`` would make: same point ids, placeholder
vectors, payloads and payload indexes, and a rebuild on either store fits the same model; with ``lay_columns``
it also holds the log's columns a rebuild would store (``engine.feedback_blocks``), read by the next rebuild."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from engine import feedback_blocks
from engine.feedback import Event, feedback_point_id, record_feedback
from engine.learned.rebuild import rebuild_preferences
from engine.schema import FEEDBACK
from engine.settings import Settings
from engine.store import Store, open_store
from tests.engine.test_store_users import DIM, fill

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from rebuild import feedback_point_ids, lay_columns, lay_feedback  # noqa: E402


def _log(n: int, m: int, seed: int = 3) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    b = np.where(a == b, (b + 1) % n, b)
    _, first = np.unique(a * n + b, return_index=True)
    a, b = a[first], b[first]
    return [f"u{i}" for i in range(n)], a, b, rng.random(a.size) < 0.4


def _points(store: Store) -> dict[str, tuple[dict[str, tuple[str, object]], list[float]]]:
    """Every feedback point: id -> (payload with each value's type, vector); types count (3 != 3.0 here)."""
    out = {}
    for p in store.scroll(FEEDBACK, with_vectors=True):
        assert p.vector is not None
        out[p.id] = ({k: (type(v).__name__, v) for k, v in p.payload.items()}, p.vector.tolist())
    return out


def test_fast_point_ids_equal_feedback_point_id() -> None:
    ids, a, b, _ = _log(50, 400)
    assert feedback_point_ids(ids, a, b) == [feedback_point_id(ids[x], ids[y]) for x, y in zip(a, b, strict=True)]


def _store_pair(tmp_path: Path, ids: list[str]) -> list[tuple[Store, Settings]]:
    """Two stores set up alike with the same users: one to lay the log into, one to record it through the API."""
    out = []
    for name in ("laid", "recorded"):
        settings = Settings(store_path=tmp_path / name, progress=False)
        store = open_store(settings)
        store.setup("enc", DIM)
        fill(store, dict.fromkeys(ids, 1))
        out.append((store, settings))
    return out


@pytest.mark.parametrize("optimize_every", [0, 97])
def test_laid_store_equals_the_recorded_one(tmp_path: Path, optimize_every: int) -> None:
    ids, a, b, like = _log(30, 500)
    stores = _store_pair(tmp_path, ids)
    (laid, laid_settings), (recorded, recorded_settings) = stores
    lay_feedback(laid, ids, a, b, like, chunk=64, optimize_every=optimize_every)
    events = [
        Event(ids[x], ids[y], "like" if lk else "pass", float(x % 97)) for x, y, lk in zip(a, b, like, strict=True)
    ]
    record_feedback(recorded, events)
    got, want = _points(laid), _points(recorded)
    assert len(want) == a.size
    assert got == want
    assert laid.payload_indexes(FEEDBACK) == recorded.payload_indexes(FEEDBACK)  # type: ignore[attr-defined]
    r1, r2 = rebuild_preferences(laid, laid_settings), rebuild_preferences(recorded, recorded_settings)
    assert (r1.users, r1.events) == (r2.users, r2.events) == (30, a.size)
    assert r1.weights == r2.weights
    for s, _ in stores:
        s.close()


def _columns(rows: feedback_blocks.LogRows) -> list[np.ndarray]:
    """The rows with user ids instead of dictionary codes (two stores may number their users differently)."""
    users = np.array(rows.users)
    return [rows.hi, rows.lo, users[rows.viewer], users[rows.cand], rows.decision, rows.ts]


def test_laid_columns_equal_the_ones_a_rebuild_stores(tmp_path: Path) -> None:
    ids, a, b, like = _log(30, 500, seed=5)
    stores = [store for store, _ in _store_pair(tmp_path, ids)]
    laid, recorded = stores
    keys: list[tuple[np.ndarray, np.ndarray]] = []
    lay_feedback(laid, ids, a, b, like, chunk=64, keys=keys)
    lay_columns(laid, ids, a, b, like, keys)
    record_feedback(recorded, [Event(ids[x], ids[y], "like" if lk else "pass", float(x % 97))
                               for x, y, lk in zip(a, b, like, strict=True)])  # fmt: skip
    want = feedback_blocks.log_rows(recorded)  # read from the payloads and stored, as a first rebuild does
    for s in stores:
        s.close()
    laid = open_store(Settings(store_path=tmp_path / "laid", progress=False))
    try:
        feedback_blocks.forget(laid)
        v = feedback_blocks.read_version(laid)
        assert feedback_blocks.is_current(laid, v)
        got = feedback_blocks.stored_rows(laid)
        assert got is not None and want is not None and len(got) == len(want) == a.size
        for g, w in zip(_columns(got), _columns(want), strict=True):
            assert np.array_equal(g, w)
    finally:
        laid.close()
