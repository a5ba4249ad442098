"""The decision log's columns (engine.feedback_blocks): kept exact by every feedback write and erasure, repaired
from the payloads when missing or stale, and read by the full rebuild in place of the payloads, giving the fit
the same arrays in the same order, so the same model bit for bit, on both embedded backends."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from engine import feedback_blocks as fb
from engine.feedback import (
    DECISIONS,
    Event,
    decision_arrays,
    delete_feedback_of,
    feedback_point_id,
    record_feedback,
)
from engine.learned.rebuild import _users, rebuild_preferences
from engine.learned.served import served_model
from engine.schema import FEEDBACK, META
from engine.settings import Settings
from engine.store import Store
from engine.store.base import Point
from tests.engine.test_recommend import db, put_users, random_population  # noqa: F401 - db is a fixture

__all__ = ["db"]


def _batches(ids: list[str], seed: int) -> list[list[Event]]:
    """Four batches over ``ids``: fresh pairs, exact repeats, later decisions replacing earlier ones, older ones
    arriving late, blocks and reports (and likes after a block, which change nothing)."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    first = []
    for _ in range(260):
        a, b = rng.choice(n, 2, replace=False)
        first.append(Event(ids[a], ids[b], str(rng.choice(["like", "pass"])), float(rng.integers(0, 50))))
    repeats = first[:40]
    flip = {"like": "pass", "pass": "like"}
    later = [Event(e.viewer_id, e.candidate_id, flip[e.decision], e.ts + 100) for e in first[40:90]]
    older = [Event(e.viewer_id, e.candidate_id, "like", -1.0) for e in first[90:110]]
    excl = rng.choice(["block", "report"], 15).tolist()
    blocks = [Event(e.viewer_id, e.candidate_id, d, e.ts + 200) for e, d in zip(first[110:125], excl, strict=True)]
    after = [Event(e.viewer_id, e.candidate_id, "like", e.ts + 300) for e in blocks[:5]]
    more = []
    for _ in range(120):
        a, b = rng.choice(n, 2, replace=False)
        more.append(Event(ids[a], ids[b], str(rng.choice(["like", "pass"])), float(rng.integers(0, 500))))
    return [first[:150], first[150:] + repeats, later + older + more[:60], blocks + after + more[60:]]


def _same_arrays(store: Store) -> dict[str, int]:
    """The stored columns (read back from the store, not this process's copy) give decision_arrays' arrays."""
    ids, _, _, _ = _users(store)
    index = {u: i for i, u in enumerate(ids)}
    fb.forget(store)
    rows = fb.stored_rows(store)
    assert rows is not None, "the columns should be current"
    got, want = rows.arrays(index), decision_arrays(store, index)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and np.array_equal(g, w)
    return index


def _model(store: Store) -> dict[str, object]:
    sm = served_model(store)
    assert sm is not None
    shared = {k: v for k, v in sm.shared.items() if k != "model_id"}
    return {"shared": json.dumps(shared, sort_keys=True), "stats": sm.stats.tobytes(), "taste": sm.taste.tobytes(),
            "ids": list(sm.point_ids)}  # fmt: skip


def test_rebuild_from_columns_is_the_rebuild_from_the_log_bit_for_bit(
    db: tuple[Store, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, settings = db
    monkeypatch.setattr(fb, "PATCHED_SHARE", 10.0)  # patches, not a new set per write, on this small log
    people = random_population(30, seed=5)
    put_users(store, people)
    ids = [p["user_id"] for p in people]
    batches = _batches(ids, seed=6)
    record_feedback(store, batches[0])
    assert fb.read_version(store) is None  # no columns yet: a store as it was before them
    rebuild_preferences(store, settings)  # reads the payloads and stores the columns
    v0 = fb.read_version(store)
    assert v0 is not None and v0.rows == store.count(FEEDBACK) and v0.gen == 0
    for batch in batches[1:]:
        record_feedback(store, batch)
    v = fb.read_version(store)
    assert v is not None and v.set_id == v0.set_id and v.gen == 3 and not v.pending  # one patch per write
    _same_arrays(store)
    gone = ids[3]
    assert delete_feedback_of(store, gone) > 0
    index = _same_arrays(store)
    rows = fb.stored_rows(store)
    assert rows is not None and gone not in rows.users
    # The fit got the columns (the payload path would fail here) ...
    with monkeypatch.context() as m:
        m.setattr(fb, "scan_log", lambda *a, **k: pytest.fail("the rebuild read the payloads"))
        rep = rebuild_preferences(store, settings)
    assert rep.events == len(decision_arrays(store, index)[0]) > 200
    from_columns = _model(store)
    # ... and a rebuild from the payloads (no columns stored) fits the same model, bit for bit.
    fb.drop(store)
    rebuild_preferences(store, settings)
    assert _model(store) == from_columns


def _logged(store: Store, seed: int) -> list[str]:
    """20 users and the first batch of ``_batches`` recorded (no model); their ids."""
    people = random_population(20, seed=seed)
    put_users(store, people)
    ids = [p["user_id"] for p in people]
    record_feedback(store, _batches(ids, seed=seed + 1)[0], update_model=False)
    return ids


def test_erasure_leaves_no_trace_in_the_columns(db: tuple[Store, Settings]) -> None:
    store, settings = db
    ids = _logged(store, seed=7)
    fb.write_set(store, fb.scan_log(store) or pytest.fail("no log"))
    record_feedback(store, [Event(ids[0], ids[1], "like", 1e6), Event(ids[2], ids[0], "pass", 1e6)])  # a patch
    delete_feedback_of(store, ids[0])
    blocks = [p.payload[fb.BLOCK_KEY] for p in store.scroll(META) if (p.payload or {}).get(fb.KIND_KEY) == fb.KIND]
    named = {u for b in blocks for u in b.get("users", [])}
    assert blocks and ids[0] not in named
    rows = fb.stored_rows(store)
    scanned = fb.scan_log(store)
    assert rows is not None and scanned is not None and len(rows) == len(scanned) == store.count(FEEDBACK)
    assert set(rows.users) == set(scanned.users) == named


def _point(viewer: str, cand: str, decision: str) -> Point:
    payload = {"viewer_id": viewer, "candidate_id": cand, "decision": decision, "ts": 9e9}
    return Point(feedback_point_id(viewer, cand), np.ones(1, np.float32), payload)


def test_a_killed_write_or_one_around_record_feedback_is_repaired_by_the_rebuild(db: tuple[Store, Settings]) -> None:
    store, settings = db
    ids = _logged(store, seed=9)
    rebuild_preferences(store, settings)
    assert fb.stored_rows(store) is not None
    # A write killed after it announced itself: the log may hold points the columns do not.
    assert fb.begin_write(store) is not None
    store.upsert(FEEDBACK, [_point(ids[0], ids[1], "like")])
    assert fb.stored_rows(store) is None
    rebuild_preferences(store, settings)
    _same_arrays(store)
    # A new pair written around record_feedback (the count no longer matches).
    fresh = next((a, b) for a in ids for b in ids if a != b and not store.retrieve(FEEDBACK, [feedback_point_id(a, b)]))
    store.upsert(FEEDBACK, [_point(*fresh, "pass")])
    assert fb.stored_rows(store) is None
    rebuild_preferences(store, settings)
    _same_arrays(store)


def test_patches_pile_up_into_a_new_set(db: tuple[Store, Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = db
    ids = _logged(store, seed=11)
    first = fb.write_set(store, fb.scan_log(store) or pytest.fail("no log"))
    monkeypatch.setattr(fb, "PATCH_GENS", 2)
    for i in range(3):
        record_feedback(store, [Event(ids[i], ids[i + 5], "like", 1e6 + i)], update_model=False)
    v = fb.read_version(store)
    assert v is not None and v.set_id != first.set_id and v.gen == 0  # the third write made a new set
    assert len([p for p in store.scroll(META) if (p.payload or {}).get(fb.KIND_KEY) == fb.KIND]) == v.chunks + v.dicts
    _same_arrays(store)


def test_rows_keep_the_last_decision_of_a_pair_in_point_id_order() -> None:
    assert fb.DECISION_CODES == DECISIONS
    pids = [str(uuid.uuid4()) for _ in range(6)]
    rows = fb.rows_of(pids[:3], ["a", "b", "c"], ["b", "c", "a"], ["like", "pass", "block"], [1.0, 2.0, 3.0])
    patch = fb.rows_of([pids[1], pids[3], pids[1]], ["b", "d", "b"], ["c", "a", "c"], ["like", "pass", "report"],
                       [4.0, 5.0, 6.0])  # fmt: skip
    got = rows.updated(patch)
    order = sorted(pids[:4], key=lambda p: uuid.UUID(p).int)
    hi, lo = fb.point_keys(order)
    assert np.array_equal(got.hi, hi) and np.array_equal(got.lo, lo)
    dec = {p: DECISIONS[int(d)] for p, d in zip(order, got.decision.tolist(), strict=True)}
    assert dec == {pids[0]: "like", pids[1]: "report", pids[2]: "block", pids[3]: "pass"}
    assert got.without("a").users == ["b", "c"] and len(got.without("a")) == 1
