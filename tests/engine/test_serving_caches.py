"""The per-process copies ``recommend()`` serves from (``engine.ranking.feedback_cache``,
``engine.ranking.user_copies``): they answer exactly what the store would, and no write leaves them stale
(feedback, delete-user, a profile change, a model rebuild, a write that bypasses ``record_feedback``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from engine.feedback import Event, around, record_feedback
from engine.filters import Filter
from engine.learned.rebuild import rebuild_preferences
from engine.learned.served import served_model
from engine.ranking import feedback_cache, served_ids, user_copies
from engine.ranking.askers import load_askers
from engine.ranking.exposure import ExposureLedger
from engine.ranking.rerank import l2_normalize
from engine.recommend import _stage1_query, recommend
from engine.schema import FEEDBACK, PHOTOS, USERS, user_point_id
from engine.settings import Settings
from engine.store import Store
from engine.store.base import Point
from engine.users import delete_user
from tests.engine.test_recommend import db  # noqa: F401 - db is a fixture
from tests.engine.test_recommend_learned import _world

__all__ = ["db"]


def _second(store: Store, settings: Settings, user_id: str, exclude: tuple[str, ...] = ()) -> tuple[object, object]:
    """The learned stage 1's popular-users query for ``user_id``, and the served model."""
    asker = load_askers(store, [user_id], settings)[0]
    q = _stage1_query(asker, 10, exclude, settings)
    sm = asker.served
    assert sm is not None and sm.popular.ids
    flt = q.filter or Filter()
    only = Filter(must=(*flt.must, sm.popular), must_not=flt.must_not)
    return replace(q, filter=only, limit=max(1, q.limit // 2)), sm


def _same_as_store(store: Store, settings: Settings, user_id: str, exclude: tuple[str, ...] = ()) -> int:
    q, sm = _second(store, settings, user_id, exclude)
    got = user_copies.popular_leg(store, sm, q)  # type: ignore[arg-type]
    want = store.query(USERS, q)  # type: ignore[arg-type]
    assert got is not None
    assert [p.id for p in got] == [p.id for p in want], user_id
    np.testing.assert_allclose([p.score for p in got], [p.score for p in want], atol=1e-5)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.vector, b.vector)
    lean = user_copies.popular_rows(store, sm, q)  # type: ignore[arg-type]
    assert lean is not None and lean[0] == [p.id for p in got]
    assert lean[1].tolist() == sm.rows(lean[0]).tolist()  # type: ignore[attr-defined]
    return len(want)


def test_the_popular_leg_answers_what_the_store_answers(db: tuple[Store, Settings]) -> None:
    store, settings = db
    people, events = _world(store)
    record_feedback(store, events)
    rebuild_preferences(store, settings)
    ids = [p["user_id"] for p in people]
    seen = sum(_same_as_store(store, settings, u) for u in ids)
    assert seen > 100  # the comparison is not vacuous
    _same_as_store(store, settings, ids[0], exclude=tuple(ids[1:20]))
    # A profile change (a write to the users collection) is seen at once.
    who = next(p for p in people[1:] if p["gender"] != "female")
    moved = store.retrieve(USERS, [user_point_id(who["user_id"])], with_vectors=True)[0]
    moved.payload.update(gender="female", age=30, age_min=18, age_max=60, seeking=["female", "male", "nonbinary"])
    store.upsert(USERS, [Point(moved.id, -np.asarray(moved.vector), moved.payload)])
    for u in ids:
        _same_as_store(store, settings, u)
    # A deleted user is never returned; a rebuild changes the popular set and the copy follows.
    delete_user(store, ids[5], settings=settings)
    rebuild_preferences(store, settings)
    for u in ids:
        if u != ids[5]:
            _same_as_store(store, settings, u)


def test_the_popular_leg_steps_aside_where_other_processes_write(
    db: tuple[Store, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, settings = db
    _, events = _world(store, n=30)
    record_feedback(store, events)
    rebuild_preferences(store, settings)
    q, sm = _second(store, settings, "u000")
    monkeypatch.setattr(store, "write_count", lambda collection: None)  # as a Qdrant server reports
    assert user_copies.popular_leg(store, sm, q) is None  # type: ignore[arg-type]


def test_the_feedback_copy_is_never_stale(db: tuple[Store, Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    store, settings = db
    people, events = _world(store, n=40)
    record_feedback(store, events)
    ids = [p["user_id"] for p in people]
    me, other = ids[0], ids[1]

    def check() -> None:
        for u in ids[:8]:
            got = feedback_cache.around_cached(store, u)
            assert got == around(store, u), u

    check()
    # Served from the copy: no read of the feedback collection at all.
    real = store.scroll_payload
    monkeypatch.setattr(store, "scroll_payload", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
    assert feedback_cache.around_cached(store, me) == feedback_cache.around_cached(store, me)
    monkeypatch.setattr(store, "scroll_payload", real)
    # A like, a pass that replaces it, a block (both ways), through record_feedback.
    record_feedback(store, [Event(other, me, "like", 100.0)])
    assert feedback_cache.around_cached(store, me)[0][other] == "like"
    record_feedback(store, [Event(other, me, "pass", 101.0)])
    assert feedback_cache.around_cached(store, me)[0][other] == "pass"
    record_feedback(store, [Event(me, ids[2], "block", 102.0)])
    assert ids[2] in feedback_cache.around_cached(store, me)[1]
    assert me in feedback_cache.around_cached(store, ids[2])[1]
    check()
    # A model rebuild writes no feedback: the copy stays and stays right.
    rebuild_preferences(store, settings)
    check()
    # delete-user removes every decision about and by them, in every copy.
    assert other in feedback_cache.around_cached(store, me)[0]
    delete_user(store, other, settings=settings)
    assert other not in feedback_cache.around_cached(store, me)[0]
    check()
    # A write that bypasses record_feedback (the simulator clearing the log) is seen too.
    gone = [p.id for p in store.scroll(FEEDBACK)]
    store.delete(FEEDBACK, gone)
    assert feedback_cache.around_cached(store, me) == ({}, set())


def test_recommend_ranks_the_same_with_and_without_the_copies(
    db: tuple[Store, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, settings = db
    people, events = _world(store)
    record_feedback(store, events[: len(events) // 2])
    rebuild_preferences(store, settings)
    record_feedback(store, events[len(events) // 2 :])  # an incremental update on top
    ids = [p["user_id"] for p in people]
    for u in ids:  # fills every copy
        recommend(u, 8, store=store, settings=settings)
    # New vectors and one photo fewer for a third of the users (a re-ingestion that dropped a photo: its point
    # is deleted and the user's photo_ids shrink): the copies must not serve the old.
    points = store.retrieve(USERS, [user_point_id(u) for u in ids[::3]], with_vectors=True)
    rng = np.random.default_rng(5)
    store.delete(PHOTOS, [str(p.payload["photo_ids"][0]) for p in points])
    store.upsert(
        USERS,
        [Point(p.id, rng.standard_normal(p.vector.shape).astype(np.float32),
               {**p.payload, "photo_ids": p.payload["photo_ids"][1:]})
         for p in points if p.vector is not None],
    )  # fmt: skip
    # New photo vectors for others (their best photo for an asker changes): the photos' copy must follow too.
    photos = [p for p in store.scroll(PHOTOS, with_vectors=True) if p.payload.get("user_id") in ids[1::3]]
    store.upsert(PHOTOS, [Point(p.id, -np.asarray(p.vector), p.payload) for p in photos if p.vector is not None])
    with_copies = {u: recommend(u, 8, store=store, settings=settings) for u in ids}
    assert served_model(store) is not None
    assert sum(m.best_photo_id is not None for ms in with_copies.values() for m in ms) > 100
    assert_same_without_copies(monkeypatch, store, settings, with_copies)


def test_learned_stage1_asks_the_store_for_hits_only(
    db: tuple[Store, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the copies, the learned stage 1 reads its candidates as ``Store.query_hits`` (ids and scores, one
    call with the fresh leg batched in) and never as ``ScoredPoint``s; without them, as before."""
    store, settings = db
    people, events = _world(store)
    record_feedback(store, events)
    rebuild_preferences(store, settings)
    ids = [p["user_id"] for p in people]
    calls: list[str] = []
    inside: list[str] = []  # the call being counted (query_hits by default runs query_batch: not counted)
    for name in ("query", "query_batch", "query_hits"):
        real = getattr(store, name)

        def counted(collection: str, q: object, _name: str = name, _real: object = real) -> object:
            if collection == USERS and not inside:
                calls.append(_name)
            inside.append(_name)
            try:
                return _real(collection, q)  # type: ignore[operator]
            finally:
                inside.pop()

        monkeypatch.setattr(store, name, counted)
    ledger = ExposureLedger()
    for u in ids[:5]:
        assert recommend(u, 8, store=store, settings=settings, exposure=ledger)
    assert calls == ["query_hits"] * 5
    calls.clear()
    monkeypatch.setattr(store, "write_count", lambda collection: None)
    user_copies.forget(store)
    assert recommend(ids[0], 8, store=store, settings=settings)
    assert "query_hits" not in calls and calls


def assert_same_without_copies(
    monkeypatch: pytest.MonkeyPatch, store: Store, settings: Settings, expected: dict[str, list]
) -> None:
    """Each user's ``recommend(u, 8)`` equals ``expected[u]`` with every read from the store: no write count,
    so no per-process copy is kept or used."""
    monkeypatch.setattr(store, "write_count", lambda collection: None)
    feedback_cache.forget(store)
    user_copies.forget(store)
    for u, matches in expected.items():
        assert recommend(u, 8, store=store, settings=settings) == matches, u


def test_vectors_without_payloads(db: tuple[Store, Settings]) -> None:
    store, _ = db
    people, _ = _world(store, n=12)
    pids = [user_point_id(p["user_id"]) for p in people] + [user_point_id("nobody")]
    got = store.retrieve_vectors(USERS, pids)
    want = {p.id: p.vector for p in store.retrieve(USERS, pids, with_vectors=True)}
    assert set(got) == set(want) == set(pids[:-1])
    for pid, v in want.items():
        np.testing.assert_array_equal(got[pid], v)


def test_unit_rows_and_asker_points_are_what_the_store_holds(db: tuple[Store, Settings]) -> None:
    """``user_copies.unit_rows`` is bit for bit ``l2_normalize`` of the stacked stored vectors (zero rows for a
    point not stored; users outside the model too), and it and ``asker_points`` follow a write at once."""
    store, settings = db
    people, events = _world(store)
    record_feedback(store, events)
    rebuild_preferences(store, settings)
    sm = served_model(store)
    assert sm is not None
    pids = [user_point_id(p["user_id"]) for p in people][:40] + [user_point_id("nobody")]
    rows = np.array([sm.index.get(p, -1) for p in pids], np.int64)
    rows[3] = -1  # served as a user the model does not know: read, never kept
    dim = len(sm.space)

    def want() -> np.ndarray:
        got = store.retrieve_vectors(USERS, pids)
        stacked = np.stack([got[p] if p in got else np.zeros(dim, np.float32) for p in pids])
        return l2_normalize(stacked)

    first = user_copies.unit_rows(store, sm, pids, rows, dim)
    again = user_copies.unit_rows(store, sm, pids[::-1], rows[::-1], dim)  # from the copy, another order
    assert first is not None and again is not None
    np.testing.assert_array_equal(first, want())
    np.testing.assert_array_equal(again, want()[::-1])
    assert not np.any(first[-1])  # the point that is not stored
    before = {p.id: p for p in user_copies.asker_points(store, pids[:5])}
    assert set(before) == set(pids[:5])
    # A re-ingestion of one user's vector and profile: both copies follow at once.
    p = store.retrieve(USERS, [pids[1]], with_vectors=True)[0]
    store.upsert(USERS, [Point(p.id, -np.asarray(p.vector), {**p.payload, "age": 61})])
    moved = user_copies.unit_rows(store, sm, pids, rows, dim)
    assert moved is not None
    np.testing.assert_array_equal(moved, want())
    np.testing.assert_allclose(moved[1], -first[1], atol=1e-6)  # the store may re-normalise what it is given
    after = {q.id: q for q in user_copies.asker_points(store, pids[:5])}
    assert after[pids[1]].payload["age"] == 61 and before[pids[1]].payload["age"] != 61
    np.testing.assert_allclose(after[pids[1]].vector, -np.asarray(before[pids[1]].vector), atol=1e-6)
    after[pids[2]].payload["age"] = 99  # a caller changing what it got does not change the copy
    assert user_copies.asker_points(store, [pids[2]])[0].payload["age"] != 99


def test_served_ids_answer_what_the_model_lists(db: tuple[Store, Settings]) -> None:
    """``served_ids``: user ids and logged replies of model rows by numpy gathers equal the per-candidate
    lookups (a -1 row: ``""`` and no decision; a block is no reply), and follow a model that gained a user."""
    store, settings = db
    people, events = _world(store)
    ids = [p["user_id"] for p in people]
    record_feedback(store, [e for e in events if ids[-1] not in (e.viewer_id, e.candidate_id)])
    newcomer = store.retrieve(USERS, [user_point_id(ids[-1])], with_vectors=True)[0]
    store.delete(USERS, [newcomer.id])  # not in the model the rebuild makes; ingested again below
    rebuild_preferences(store, settings)
    sm = served_model(store)
    assert sm is not None and newcomer.id not in sm.index
    rows = np.array([sm.index.get(user_point_id(u), -1) for u in ids[:30]] + [-1], np.int64)
    assert served_ids.user_ids_of_rows(sm, rows) == [sm.user_ids[r] for r in rows[:-1]] + [""]
    lazy = served_ids.RowUserIds(sm, rows, {len(rows) - 1: "outside"})  # read one by one, or all at once
    want_ids = [sm.user_ids[r] for r in rows[:-1]] + ["outside"]
    assert len(lazy) == len(rows) and [lazy[i] for i in range(len(rows))] == want_ids
    assert lazy[np.int64(2)] == want_ids[2] and lazy[-1] == "outside" and lazy[1:3] == want_ids[1:3]
    assert list(lazy) == lazy.tolist() == want_ids
    assert served_ids.RowUserIds(sm, rows)[-1] == ""
    about = {ids[1]: "like", ids[2]: "pass", ids[3]: "block", "stranger": "like"}
    code = served_ids.decided(sm, rows, about)
    want = [
        {"like": served_ids.LIKED, "pass": served_ids.PASSED}.get(about.get(sm.user_ids[r], ""), 0) for r in rows[:-1]
    ]
    assert code.tolist() == [*want, served_ids.NONE]
    assert code.tolist().count(served_ids.LIKED) == 1 and code.tolist().count(served_ids.PASSED) == 1
    # The newcomer ingested and deciding: the incremental update appends their row to the same served copy,
    # and the arrays are made again.
    n, before = len(sm.user_ids), sm
    store.upsert(USERS, [newcomer])
    dim = len(sm.space)
    assert user_copies.unit_rows(store, sm, [user_point_id(ids[0])], rows[:1], dim) is not None  # made at n rows
    record_feedback(store, [e for e in events if ids[-1] in (e.viewer_id, e.candidate_id)])
    sm = served_model(store)
    assert sm is before and len(sm.user_ids) > n
    grown = user_copies.unit_rows(store, sm, [newcomer.id], np.array([sm.index[newcomer.id]]), dim)
    assert grown is not None  # the unit rows grew with the model (no write to users since they were made)
    np.testing.assert_array_equal(grown, l2_normalize(store.retrieve_vectors(USERS, [newcomer.id])[newcomer.id][None]))
    last = np.array([sm.index[user_point_id(ids[-1])]], np.int64)
    assert served_ids.user_ids_of_rows(sm, last) == [ids[-1]]
    assert served_ids.decided(sm, last, {ids[-1]: "pass"}).tolist() == [served_ids.PASSED]


def test_stage1_legs_merge_by_row_as_by_id() -> None:
    """``_merged_pool`` keeps the first leg, then each later leg's candidates not seen before, in order, as
    the merge by point id did: in-model candidates seen by row, the others (-1) by id."""
    from engine.recommend import _merged_pool

    legs = [
        (["a", "b", "x"], np.array([0, 1, -1])),
        (["b", "c", "x", "y"], np.array([1, 2, -1, -1])),
        (["c", "d", "y", "a", "e"], np.array([2, 3, -1, 0, 4])),
    ]
    want: list[str] = []
    for ids, _ in legs:
        want.extend(i for i in ids if i not in want)
    pool = _merged_pool(5, legs)
    assert pool.ids == want == ["a", "b", "x", "c", "y", "d", "e"]
    assert pool.rows is not None and pool.rows.tolist() == [0, 1, -1, 2, -1, 3, 4]
    assert _merged_pool(5, legs[:1]).ids == ["a", "b", "x"]
