"""``engine.ranking.warm``: the copies filled in bulk answer exactly what the store would, an asker's first
call after it reads neither their feedback nor their users point, and no write leaves the bulk copies stale."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from engine.feedback import Event, around, record_feedback
from engine.learned.rebuild import rebuild_preferences
from engine.ranking import feedback_cache, user_copies
from engine.ranking.warm import warm
from engine.recommend import recommend
from engine.schema import FEEDBACK, PHOTOS, USERS, user_point_id
from engine.settings import Settings
from engine.store import Store
from engine.store.base import Point
from tests.engine.test_recommend import db  # noqa: F401 - db is a fixture
from tests.engine.test_recommend_learned import _world
from tests.engine.test_serving_caches import assert_same_without_copies

__all__ = ["db"]


def _forbid(monkeypatch: pytest.MonkeyPatch, store: Store, *names: str) -> None:
    """Make ``store.<name>`` fail the test when called (what a warm call must not read)."""

    def fail(*a: Any, **k: Any) -> Iterator[Any]:
        raise AssertionError(f"read from the store: {a[:1]}")

    for name in names:
        monkeypatch.setattr(store, name, fail)


def test_warm_copies_rank_as_the_store_and_spare_the_first_calls_reads(
    db: tuple[Store, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, settings = db
    people, events = _world(store)
    ids = [p["user_id"] for p in people]
    events.append(Event(ids[0], ids[1], "block", 50.0))  # a block: excluded both ways
    record_feedback(store, events[: len(events) // 2])
    rebuild_preferences(store, settings)
    record_feedback(store, events[len(events) // 2 :])  # an incremental update on top
    report = warm(store, settings)
    assert report.users == len(ids) and report.photos == store.count(PHOTOS) > len(ids)
    assert report.events == store.count(FEEDBACK) == len({(e.viewer_id, e.candidate_id) for e in events})
    # Every asker's feedback as around() reads it, and their users point as stored.
    for u in ids:
        assert feedback_cache.around_cached(store, u) == around(store, u), u
    # First calls after warm read neither the feedback collection nor the askers' users points.
    monkeypatch.setattr(store, "scroll_payload", lambda *a, **k: (_ for _ in ()).throw(AssertionError("feedback")))
    real_retrieve = store.retrieve

    def retrieve(collection: str, point_ids: Any, **k: Any) -> list[Point]:
        assert collection != USERS, "a users point read one by one"
        return real_retrieve(collection, point_ids, **k)

    monkeypatch.setattr(store, "retrieve", retrieve)
    monkeypatch.setattr(store, "retrieve_vectors", lambda *a, **k: (_ for _ in ()).throw(AssertionError("vectors")))
    warmed = {u: recommend(u, 8, store=store, settings=settings) for u in ids}
    monkeypatch.undo()
    assert ids[1] not in {m.user_id for m in warmed[ids[0]]} and ids[0] not in {m.user_id for m in warmed[ids[1]]}
    assert sum(len(ms) for ms in warmed.values()) > 2 * len(ids)  # not vacuous
    assert_same_without_copies(monkeypatch, store, settings, warmed)  # every read from the store


def test_the_complete_feedback_copy_follows_every_write(db: tuple[Store, Settings]) -> None:
    store, settings = db
    people, events = _world(store, n=40)
    ids = [p["user_id"] for p in people]
    me, other, third, newcomer = ids[0], ids[1], ids[2], ids[-1]  # the newcomer: no feedback either way yet
    record_feedback(store, [e for e in events if newcomer not in (e.viewer_id, e.candidate_id)])
    assert warm(store, settings).events == store.count(FEEDBACK)

    def check() -> None:
        for u in ids:
            assert feedback_cache.around_cached(store, u) == around(store, u), u

    check()
    assert feedback_cache.around_cached(store, newcomer) == ({}, set())
    # record_feedback: the users it touched are read again, the others stay served from the copy.
    record_feedback(store, [Event(other, me, "like", 100.0), Event(newcomer, me, "pass", 100.0)])
    assert feedback_cache.around_cached(store, me)[0][other] == "like"
    assert feedback_cache.around_cached(store, me)[0][newcomer] == "pass"
    record_feedback(store, [Event(me, third, "report", 101.0)])
    assert third in feedback_cache.around_cached(store, me)[1] and me in feedback_cache.around_cached(store, third)[1]
    check()
    # A write that bypasses record_feedback drops the whole copy.
    store.delete(FEEDBACK, [p.id for p in store.scroll(FEEDBACK)])
    for u in (me, other, third, newcomer):
        assert feedback_cache.around_cached(store, u) == ({}, set())


def test_warm_fills_nothing_over_its_limits_or_where_other_processes_write(db: tuple[Store, Settings]) -> None:
    store, settings = db
    people, events = _world(store, n=20)
    record_feedback(store, events)
    assert warm(store, settings, max_users=10, max_events=10).users is None
    assert warm(store, settings, max_users=10, max_events=10).events is None
    # The users copy after a bulk fill follows a profile change at once.
    assert warm(store, settings).users == 20
    pid = user_point_id(people[3]["user_id"])
    before = user_copies.asker_points(store, [pid])[0]
    store.upsert(USERS, [Point(pid, -np.asarray(before.vector), {**before.payload, "age": 64})])
    after = user_copies.asker_points(store, [pid])[0]
    assert after.payload["age"] == 64 and after.vector is not None
    np.testing.assert_allclose(after.vector, -np.asarray(before.vector), atol=1e-6)


def test_warm_steps_aside_where_other_processes_write(
    db: tuple[Store, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, settings = db
    _, events = _world(store, n=20)
    record_feedback(store, events)
    monkeypatch.setattr(store, "write_count", lambda collection: None)  # as a Qdrant server reports
    report = warm(store, settings)
    assert report.users is None and report.events is None and report.photos is None
