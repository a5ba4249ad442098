"""refresh_changed (the incremental reciprocity pass) against the full pass, on a real embedded store: after
arrivals, rewritten users, deletions and changed like histories, the statistics it leaves are the ones a full
pass computes (a full pass right after it rewrites nothing), users it did not need are not written, and it
scores far fewer users than a full pass. delete_user refreshes the users who had the deleted one in their
top-K at once."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from engine.compatibility import Profile
from engine.filters import Filter, MatchAny
from engine.likes import record_likes
from engine.reciprocity.blocks import STATS_VERSION_POINT_ID, forget, kth_of_points, read_version, stored
from engine.reciprocity.full import departures, refresh
from engine.reciprocity.incremental import refresh_changed
from engine.reciprocity.stats import TOP_KEEP, row_change, rows_change
from engine.reciprocity.table import Table
from engine.reciprocity.topk import NO_KTH, compatible_topk, exact_kth
from engine.schema import KTH_SIM, KTH_TOP, META, USERS, user_point_id, window_of, window_value
from engine.settings import Settings
from engine.store import Store
from engine.store.base import Point
from engine.users import delete_user
from tests.engine.reciprocity_population import (
    DIM,
    GENDERS,
    K,
    assert_same_as_full_pass,
    disagreements,
    populated,
    stats,
    user_point,
)


def test_full_pass_stores_the_top_k_list_exactly(reciprocity_db: tuple[Store, Settings]) -> None:
    store, settings = reciprocity_db
    populated(store, settings, 200, seed=1)
    pts = list(store.scroll(USERS, with_vectors=True))
    vectors = np.stack([np.asarray(p.vector, np.float32) for p in pts])
    profiles = [Profile.from_payload(p.payload) for p in pts]
    tastes = [p.payload.get("taste") for p in pts]
    st = stats(store)
    assert not any(KTH_SIM in p.payload for p in pts)  # the statistics live in the blocks, not the payloads
    for i, p in enumerate(pts):
        q = np.asarray(tastes[i], np.float32) if tastes[i] is not None else vectors[i]
        sims = sorted(
            (float(q @ vectors[j]) for j in range(len(pts)) if j != i and profiles[i].compatible(profiles[j])),
            reverse=True,
        )
        window = sims[max(0, K - TOP_KEEP) : K] if len(sims) >= K else sims
        np.testing.assert_allclose(window_of(st[p.id][KTH_TOP]), window, atol=1e-5)
        assert st[p.id][KTH_SIM] == pytest.approx(sims[K - 1] if len(sims) >= K else NO_KTH, abs=1e-5)
    without_taste = [i for i, t in enumerate(tastes) if t is None]
    expected = exact_kth(vectors, profiles, K)
    got = np.array([st[pts[i].id][KTH_SIM] for i in without_taste])
    np.testing.assert_allclose(got, expected[without_taste], atol=1e-5)


def test_incremental_refresh_equals_a_full_pass(reciprocity_db: tuple[Store, Settings]) -> None:
    store, settings = reciprocity_db
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
    after_incremental = stats(store)
    assert_same_as_full_pass(store, settings)
    # It scored far fewer users than a full pass, and merged the arrivals into others' lists.
    assert rep.users == 414
    assert rep.recomputed < rep.users // 2
    assert rep.merged > 0
    # Users it did not rewrite are byte for byte as before; the ones it did are exactly the changed ones.
    after = after_incremental
    untouched = [pid for pid in after if pid in before and after[pid] == before[pid]]
    assert len(untouched) > 100
    moved = {pid for pid in after if pid in before and after[pid][KTH_TOP] != before[pid][KTH_TOP]}
    assert rep.rewritten >= len(moved) > 0


def test_arrivals_above_a_window_make_it_run_out_and_recompute(reciprocity_db: tuple[Store, Settings]) -> None:
    """Ten near-copies of one user's taste, compatible with them: more newcomers above their window than it
    holds entries, so the window cannot tell the new K-th and that user is recomputed; still exact."""
    store, settings = reciprocity_db
    rng = populated(store, settings, 300, seed=6)
    target = next(p for p in stats(store).values() if p[KTH_SIM] > NO_KTH and "male" in p["seeking"])
    (tp,) = store.retrieve(USERS, [user_point_id(target["user_id"])], with_vectors=True)
    near = []
    for i in range(10):
        v = np.asarray(tp.vector, np.float32) + rng.standard_normal(DIM).astype(np.float32) * 0.01
        payload = {"user_id": f"near{i}", "gender": "male", "age": target["age_min"], "seeking": [target["gender"]],
                   "age_min": target["age"], "age_max": target["age"]}  # fmt: skip
        near.append(Point(id=user_point_id(f"near{i}"), vector=v / np.linalg.norm(v), payload=payload))
    store.upsert(USERS, near)
    rep = refresh_changed(store, settings, arrived=[f"near{i}" for i in range(10)])
    assert rep.recomputed > 10  # the arrivals and at least the target
    assert_same_as_full_pass(store, settings)
    assert stats(store)[tp.id][KTH_SIM] > target[KTH_SIM]


def test_incremental_refresh_without_the_departures_leaves_stale_statistics(
    reciprocity_db: tuple[Store, Settings],
) -> None:
    """The control for the test above: what the departures are for (a full pass must then rewrite)."""
    store, settings = reciprocity_db
    populated(store, settings, 400, seed=3)
    hubs = sorted(stats(store).values(), key=lambda p: -p[KTH_SIM])[:10]
    store.delete(USERS, [user_point_id(p["user_id"]) for p in hubs])
    refresh_changed(store, settings)
    assert len(disagreements(store, settings)) > 0


def test_missing_statistics_are_computed_as_arrivals(reciprocity_db: tuple[Store, Settings]) -> None:
    """A user written without statistics (a run stopped before its refresh) is found and merged in, with
    no arrival named; a changed K makes every list stale and the pass recomputes everyone."""
    store, settings = reciprocity_db
    rng = populated(store, settings, 300, seed=4)
    store.upsert(USERS, [user_point(f"late{i}", rng) for i in range(5)])
    rep = refresh_changed(store, settings)
    assert rep.recomputed < 100 and rep.rewritten >= 5
    assert_same_as_full_pass(store, settings)
    other_k = settings.model_copy(update={"recommend": settings.recommend.model_copy(update={"reciprocity_k": 3})})
    rep = refresh_changed(store, other_k)
    assert rep.recomputed == rep.users == 305
    assert refresh(store, other_k).rewritten == 0


def test_delete_user_refreshes_the_others_at_once(reciprocity_db: tuple[Store, Settings]) -> None:
    store, settings = reciprocity_db
    populated(store, settings, 400, seed=5)
    # The user most often in others' top-K lists: deleting them moves the most statistics.
    pts = list(store.scroll(USERS, with_vectors=True))
    vecs = np.stack([np.asarray(p.vector, np.float32) for p in pts])
    st = stats(store)
    lasts = np.array([st[p.id][KTH_SIM] for p in pts])
    hub = pts[int(np.argmax(((vecs @ vecs.T) >= lasts[:, None]).sum(axis=0)))].payload["user_id"]
    assert delete_user(store, hub, settings=settings) == 1
    assert store.retrieve(USERS, [user_point_id(hub)]) == []
    forget(store)  # read the blocks back from the store, not this process's copy
    blocks, version = stored(store), read_version(store)
    assert blocks is not None and version is not None
    assert blocks.rows([user_point_id(hub)])[0] == -1 and len(blocks) == version.rows == 399  # their row left
    # ... every block: the previous set's points are deleted, only the new set's chunks remain.
    kinds = store.count(META, Filter(must=(MatchAny.of("kind", ["reciprocity_stats"]),)))
    assert kinds == version.chunks and version.gen == 0
    assert_same_as_full_pass(store, settings)
    # A liked user: the liker's taste loses them, so the liker's own list changes too.
    assert delete_user(store, "u1" if hub != "u1" else "u2", settings=settings) == 1
    assert_same_as_full_pass(store, settings)


@pytest.mark.parametrize("coarse", [True, False])
def test_compatible_topk_on_large_and_small_groups(coarse: bool) -> None:
    """Both ways compatible_topk scores a group (a large one against a copy of its pool, a few rows against
    their age window in place) give each user's K best compatible similarities, for all rows or a subset."""
    rng = np.random.default_rng(7)
    profiles = []
    for i in range(500):
        g = GENDERS[int(rng.integers(3))]
        seeking = tuple(sorted(set(rng.choice(GENDERS, size=int(rng.integers(1, 4))).tolist())))
        age = int(rng.integers(30, 32)) if coarse else int(rng.integers(18, 60))
        lo, hi = (25, 35) if coarse else (max(18, age - int(rng.integers(0, 10))), age + int(rng.integers(0, 10)))
        profiles.append(Profile(f"u{i}", g, age, seeking, lo, hi))
    v = rng.standard_normal((500, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    taste = v[3] + v[4]
    queries = {3: (taste / np.linalg.norm(taste)).astype(np.float32)}
    rows = np.arange(0, 500, 7)
    got = compatible_topk(v, profiles, K, rows=rows, queries=queries, block=5)
    for j, i in enumerate(rows):
        q = queries.get(int(i), v[i])
        pool = [o for o in range(500) if o != i and profiles[i].compatible(profiles[o])]
        sims = sorted((float(q @ v[o]) for o in pool), reverse=True)
        want = np.full(K, -np.inf)
        want[: min(K, len(sims))] = sims[:K]
        np.testing.assert_allclose(got[j], want, atol=1e-5)
    np.testing.assert_allclose(compatible_topk(v, profiles, K, queries=queries)[rows], got, atol=1e-6)


def test_record_likes_refreshes_the_likers_own_statistics(reciprocity_db: tuple[Store, Settings]) -> None:
    """A new like history changes the liker's taste, hence what their own list is ranked by: their kth_sim
    is recomputed at once (nobody else's depends on their taste)."""
    store, settings = reciprocity_db
    populated(store, settings, 300, seed=8)
    record_likes(store, "u100", ["u7", "u8", "u9"], settings=settings)
    assert disagreements(store, settings) == []


def _as_legacy(store: Store, as_lists: set[str]) -> None:
    """Make ``store`` look written before the blocks: every user's statistics in their payload (``kth_top``
    as a list of floats for ``as_lists``, else one string), no block, no cache."""
    blocks = stored(store)
    assert blocks is not None
    changes = {}
    for pid, p in stats(store).items():
        window = window_of(p[KTH_TOP]) or []
        changes[pid] = {
            KTH_SIM: p[KTH_SIM],
            "kth_k": p["kth_k"],
            KTH_TOP: window if pid in as_lists else window_value(window),
        }
    store.set_payload(USERS, changes)
    store.delete_by_filter(META, Filter(must=(MatchAny.of("kind", ["reciprocity_stats"]),)))
    store.delete(META, [STATS_VERSION_POINT_ID])
    forget(store)
    store.set_cache_token(None)
    assert read_version(store) is None and stored(store) is None


def test_a_store_written_before_the_blocks_is_read_from_its_payloads(reciprocity_db: tuple[Store, Settings]) -> None:
    """Stores written before ``engine.reciprocity.blocks`` hold the statistics in the payloads (``kth_top`` as
    one string, or as a list of floats before that). ``recommend()`` reads them there, and an incremental pass
    reads a mix of both forms (no cache: it scrolls), merges the arrivals into them, writes the blocks, and
    leaves every user's statistics as a full pass computes them; a full pass then removes the payload copies."""
    store, settings = reciprocity_db
    rng = populated(store, settings, 300, seed=21)
    before = stats(store)
    as_lists = {pid for pid in sorted(before)[::2]}
    _as_legacy(store, as_lists)
    legacy = stats(store)
    assert all(isinstance(p[KTH_TOP], list) == (pid in as_lists) for pid, p in legacy.items())
    some = sorted(before)[:5]
    got = kth_of_points(store, some, [legacy[pid] for pid in some])  # what recommend() reads: the payloads
    # (a payload float may come back one ulp off: Edge's JSON round trip, not this code)
    np.testing.assert_allclose(got, [before[pid][KTH_SIM] for pid in some], rtol=1e-14, atol=0)
    store.upsert(USERS, [user_point(f"new{i}", rng) for i in range(15)])
    rep = refresh_changed(store, settings, arrived=[f"new{i}" for i in range(15)])
    assert rep.cache != "used" and rep.merged > 0 and rep.recomputed < 100
    assert read_version(store) is not None  # the blocks now hold them
    after = stats(store)
    moved = [pid for pid in as_lists if after[pid][KTH_SIM] != before[pid][KTH_SIM]]
    assert moved
    refresh(store, settings)
    assert not any(KTH_SIM in p.payload or KTH_TOP in p.payload for p in store.scroll(USERS))  # removed
    full = stats(store)
    assert sorted(pid for pid in full if abs(full[pid][KTH_SIM] - after[pid][KTH_SIM]) > 1e-6) == []
    assert_same_as_full_pass(store, settings)


def test_rows_change_is_row_change_for_many_rows() -> None:
    """The array form the incremental pass uses for its merged users writes the same keys and leaves the
    same table as the per-row one: unchanged rows (within float noise) untouched, longer windows widening
    the table, a missing window or another K rewritten."""
    rng = np.random.default_rng(9)
    points = []
    for i in range(40):
        p = user_point(f"u{i}", rng)
        window = sorted(rng.uniform(0, 1, int(rng.integers(1, TOP_KEEP + 1))).tolist(), reverse=True)
        p.payload |= {KTH_SIM: window[-1], "kth_k": K, KTH_TOP: window_value(window)}
        points.append(p)
    points[3].payload.pop(KTH_TOP)
    points[4].payload["kth_k"] = K + 1
    base = Table.from_points(points)
    new: dict[int, tuple[float, list[float]]] = {}
    for i in range(len(base)):
        old = base.top[i, : max(base.top_len[i], 0)].tolist() or [0.5]
        if i % 3 == 0:
            window = [x + 1e-8 for x in old]  # float noise: nothing to write
        elif i % 3 == 1:
            window = sorted([*old, float(rng.uniform(0, 1))], reverse=True)[: TOP_KEEP + 2]
        else:
            window = sorted([float(x) for x in rng.uniform(0, 1, len(old))], reverse=True)
        new[i] = (window[-1], window)
    one, many = copy.deepcopy(base), copy.deepcopy(base)
    want = {
        str(one.ids[i]): c for i, (kth, w) in new.items() if (c := row_change(one, i, kth, w, K, None, retasted=False))
    }
    got = rows_change(many, new, K)
    assert got == want and 20 < len(got) < len(new)
    assert str(base.ids[3]) in got and str(base.ids[4]) in got
    for name in ("kth", "kth_k", "top_len", "top"):
        np.testing.assert_array_equal(getattr(many, name), getattr(one, name), err_msg=name)


def test_merging_one_arrival_as_arrays_is_merge_window() -> None:
    """The array merge the incremental pass uses for users with one arrival above their K-th gives what
    ``merge_window`` gives one by one: inserted below the window's first entry (or into a window of all K),
    the window shortened when it lands above it, and an emptied window sent to be recomputed."""
    from engine.reciprocity.incremental import _merge_one
    from engine.reciprocity.stats import merge_window

    rng = np.random.default_rng(10)
    points = [user_point(f"u{i}", rng) for i in range(300)]
    for j, p in enumerate(points):
        k = 4 if j % 5 == 0 else K  # a window of all K users (K <= TOP_KEEP) takes the insert path always
        n = k if k <= TOP_KEEP else int(rng.integers(1, TOP_KEEP + 1))
        window = sorted(rng.uniform(-0.5, 0.9, n).tolist(), reverse=True)
        p.payload |= {KTH_SIM: window[-1], "kth_k": k, KTH_TOP: window_value(window)}
    table = Table.from_points(points)
    rows = np.arange(len(table))
    ks = table.kth_k.copy()
    # One new similarity above each K-th: below, equal to, or above the window's first entry.
    first = table.top[rows, 0]
    pick = rng.integers(0, 3, len(rows))
    s = np.where(pick == 0, (table.kth + first) / 2, np.where(pick == 1, first, first + 0.05))
    s = np.where(s > table.kth, s, table.kth + 1e-3)
    got_rows, got_kth, got_lens, got_top, ran_out = [], [], [], [], []
    for k in (4, K):
        sel = rows[ks == k]
        recompute = np.zeros(len(table), bool)
        m = _merge_one(table, sel, s[sel], k, recompute)
        got_rows += m.rows.tolist()
        got_kth += m.kth.tolist()
        got_lens += m.lens.tolist()
        got_top += [m.top[i, : m.lens[i]].tolist() for i in range(len(m.rows))]
        ran_out += np.flatnonzero(recompute).tolist()
    want_rows, want_kth, want_top, want_out = [], [], [], []
    for i in rows.tolist():
        window = table.top[i, : table.top_len[i]].tolist()
        w = merge_window(float(table.kth[i]), window, [float(s[i])], int(ks[i]))
        if w is None:
            want_out.append(i)
        else:
            want_rows.append(i)
            want_kth.append(w[0])
            want_top.append(w[1])
    order = np.argsort(got_rows)
    assert [got_rows[o] for o in order] == want_rows and sorted(ran_out) == want_out
    assert [got_kth[o] for o in order] == want_kth and [got_top[o] for o in order] == want_top
    assert len(want_out) > 0 and len({len(t) for t in want_top}) > 2  # every path taken
