"""refresh_changed (the incremental reciprocity pass) against the full pass, on a real embedded store: after
arrivals, rewritten users, deletions and changed like histories, the statistics it leaves are the ones a full
pass computes (a full pass right after it rewrites nothing), users it did not need are not written, and it
scores far fewer users than a full pass. delete_user refreshes the users who had the deleted one in their
top-K at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.compatibility import Profile
from engine.likes import record_likes
from engine.reciprocity import (
    KTH_FIELD,
    NO_KTH,
    TOP_FIELD,
    departures,
    exact_kth,
    refresh,
    refresh_changed,
)
from engine.schema import USERS, user_point_id
from engine.settings import Settings
from engine.store import Store, open_store
from engine.store.base import Point
from engine.users import delete_user

DIM = 16
K = 5
GENDERS = ("female", "male", "nonbinary")


@pytest.fixture(params=["edge", "local"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Settings]]:
    settings = Settings(store_path=tmp_path / "q", store_backend=request.param, progress=False)  # type: ignore[call-arg]
    settings = settings.model_copy(update={"recommend": settings.recommend.model_copy(update={"reciprocity_k": K})})
    store = open_store(settings)
    store.setup("test-encoder", DIM)
    try:
        yield store, settings
    finally:
        store.close()


def user_point(uid: str, rng: np.random.Generator) -> Point:
    """A user with a random unit vector and a random profile (varied genders, seeking sets, windows)."""
    g = GENDERS[int(rng.integers(3))]
    age = int(rng.integers(18, 50))
    seeking = sorted(set(rng.choice(GENDERS, size=int(rng.integers(1, 4))).tolist()))
    lo, hi = max(18, age - int(rng.integers(0, 12))), age + int(rng.integers(0, 12))
    v = rng.standard_normal(DIM).astype(np.float32)
    payload = {"user_id": uid, "gender": g, "age": age, "seeking": seeking, "age_min": lo, "age_max": hi}
    return Point(id=user_point_id(uid), vector=v / np.linalg.norm(v), payload=payload)


def stats(store: Store) -> dict[str, dict[str, Any]]:
    return {p.id: dict(p.payload) for p in store.scroll(USERS)}


def populated(store: Store, settings: Settings, n: int, seed: int) -> np.random.Generator:
    rng = np.random.default_rng(seed)
    store.upsert(USERS, [user_point(f"u{i}", rng) for i in range(n)])
    for i in range(0, 40, 4):  # some like histories: those users' lists are ranked by their taste
        record_likes(store, f"u{i}", [f"u{i + 1}", f"u{i + 2}"], settings=settings)
    refresh(store, settings)
    return rng


def assert_same_as_full_pass(store: Store, settings: Settings) -> dict[str, dict[str, Any]]:
    """The stored statistics are what a full pass computes: it finds nothing to rewrite."""
    before = stats(store)
    assert refresh(store, settings).rewritten == 0
    after = stats(store)
    for pid, payload in after.items():
        assert payload[KTH_FIELD] == pytest.approx(before[pid][KTH_FIELD], abs=1e-6)
        np.testing.assert_allclose(payload[TOP_FIELD], before[pid][TOP_FIELD], atol=1e-6)
    return after


def test_full_pass_stores_the_top_k_list_exactly(db: tuple[Store, Settings]) -> None:
    store, settings = db
    populated(store, settings, 200, seed=1)
    pts = list(store.scroll(USERS, with_vectors=True))
    vectors = np.stack([np.asarray(p.vector, np.float32) for p in pts])
    profiles = [Profile.from_payload(p.payload) for p in pts]
    tastes = [p.payload.get("taste") for p in pts]
    for i, p in enumerate(pts):
        q = np.asarray(tastes[i], np.float32) if tastes[i] is not None else vectors[i]
        sims = sorted(
            (float(q @ vectors[j]) for j in range(len(pts)) if j != i and profiles[i].compatible(profiles[j])),
            reverse=True,
        )
        np.testing.assert_allclose(p.payload[TOP_FIELD], sims[:K], atol=1e-5)
        assert p.payload[KTH_FIELD] == pytest.approx(sims[K - 1] if len(sims) >= K else NO_KTH, abs=1e-5)
    without_taste = [i for i, t in enumerate(tastes) if t is None]
    expected = exact_kth(vectors, profiles, K)
    got = np.array([pts[i].payload[KTH_FIELD] for i in without_taste])
    np.testing.assert_allclose(got, expected[without_taste], atol=1e-5)


def test_incremental_refresh_equals_a_full_pass(db: tuple[Store, Settings]) -> None:
    store, settings = db
    rng = populated(store, settings, 400, seed=2)
    before = stats(store)
    # 20 arrivals, 6 users rewritten (new vector and profile), 6 deleted, 3 new like histories.
    changed = [f"u{i}" for i in range(100, 106)]
    deleted = [f"u{i}" for i in range(200, 206)]
    gone = departures(store, changed + deleted)
    assert len(gone) == 12
    store.upsert(USERS, [user_point(f"new{i}", rng) for i in range(20)])
    store.upsert(USERS, [user_point(u, rng) for u in changed])
    store.delete(USERS, [user_point_id(u) for u in deleted])
    liked = ["u301", "u302", "u303"]
    for u in liked:
        record_likes(store, u, ["new1", "u5"], settings=settings)

    rep = refresh_changed(
        store, settings, arrived=[f"new{i}" for i in range(20)] + changed, departed=gone, retasted=liked
    )
    after = assert_same_as_full_pass(store, settings)
    # It scored far fewer users than a full pass, and merged the arrivals into others' lists.
    assert rep.users == 414
    assert rep.recomputed < rep.users // 3
    assert rep.merged > 0
    # Users it did not rewrite are byte for byte as before; the ones it did are exactly the changed ones.
    untouched = [pid for pid in after if pid in before and after[pid] == before[pid]]
    assert len(untouched) > 100
    moved = {pid for pid in after if pid in before and after[pid][TOP_FIELD] != before[pid][TOP_FIELD]}
    assert rep.rewritten >= len(moved) > 0


def test_incremental_refresh_without_the_departures_leaves_stale_statistics(db: tuple[Store, Settings]) -> None:
    """The control for the test above: what the departures are for (a full pass must then rewrite)."""
    store, settings = db
    populated(store, settings, 400, seed=3)
    hubs = sorted(stats(store).values(), key=lambda p: -p[KTH_FIELD])[:10]
    store.delete(USERS, [user_point_id(p["user_id"]) for p in hubs])
    refresh_changed(store, settings)
    assert refresh(store, settings).rewritten > 0


def test_missing_statistics_are_computed_as_arrivals(db: tuple[Store, Settings]) -> None:
    """A user written without statistics (a run stopped before its refresh) is found and merged in, with
    no arrival named; a changed K makes every list stale and the pass recomputes everyone."""
    store, settings = db
    rng = populated(store, settings, 300, seed=4)
    store.upsert(USERS, [user_point(f"late{i}", rng) for i in range(5)])
    rep = refresh_changed(store, settings)
    assert rep.recomputed < 100 and rep.rewritten >= 5
    assert_same_as_full_pass(store, settings)
    other_k = settings.model_copy(update={"recommend": settings.recommend.model_copy(update={"reciprocity_k": 3})})
    rep = refresh_changed(store, other_k)
    assert rep.recomputed == rep.users == 305
    assert refresh(store, other_k).rewritten == 0


def test_delete_user_refreshes_the_others_at_once(db: tuple[Store, Settings]) -> None:
    store, settings = db
    populated(store, settings, 400, seed=5)
    # The user most often in others' top-K lists: deleting them moves the most statistics.
    pts = list(store.scroll(USERS, with_vectors=True))
    vecs = np.stack([np.asarray(p.vector, np.float32) for p in pts])
    lasts = np.array([p.payload[KTH_FIELD] for p in pts])
    hub = pts[int(np.argmax(((vecs @ vecs.T) >= lasts[:, None]).sum(axis=0)))].payload["user_id"]
    assert delete_user(store, hub, settings=settings) == 1
    assert store.retrieve(USERS, [user_point_id(hub)]) == []
    assert_same_as_full_pass(store, settings)
