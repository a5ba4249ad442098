"""The reciprocity statistics' blocks (``engine.reciprocity.blocks``): the ranking they give equals the one the
payloads gave, a like's patch and its compaction, a second process's view, the cache after statistics moved
under it, and an erasure that leaves no row of the deleted user in any block."""

from __future__ import annotations

import numpy as np

from engine.filters import Filter, MatchAny
from engine.likes import record_likes
from engine.reciprocity import blocks as blocks_mod
from engine.reciprocity.blocks import STATS_VERSION_POINT_ID, forget, read_version, stored
from engine.reciprocity.full import refresh
from engine.reciprocity.incremental import refresh_changed
from engine.recommend import recommend
from engine.schema import KTH_K, KTH_SIM, KTH_TOP, META, USERS, user_point_id, window_of, window_value
from engine.settings import Settings
from engine.store import Store
from engine.users import delete_user
from tests.engine.reciprocity_population import assert_same_as_full_pass, populated, stats, user_point
from tests.engine.test_recommend import put_users, random_population

BLOCK_POINTS = Filter(must=(MatchAny.of("kind", ["reciprocity_stats"]),))


def _to_payloads(store: Store) -> None:
    """The store as the code before the blocks left it: statistics in the payloads, no block, no cache."""
    changes = {
        pid: {KTH_SIM: p[KTH_SIM], KTH_K: p[KTH_K], KTH_TOP: window_value(window_of(p[KTH_TOP]) or [])}
        for pid, p in stats(store).items()
    }
    store.set_payload(USERS, changes)
    store.delete_by_filter(META, BLOCK_POINTS)
    store.delete(META, [STATS_VERSION_POINT_ID])
    forget(store)
    store.set_cache_token(None)
    assert stored(store) is None


def test_recommend_ranks_the_same_from_blocks_as_from_payloads(reciprocity_db: tuple[Store, Settings]) -> None:
    """The photo-only path reads every candidate's kth_sim (and the asker's): the same lists and scores
    whether they come from the blocks or, as before, from the payloads."""
    store, settings = reciprocity_db
    people = random_population(150, seed=3)
    put_users(store, people)
    refresh(store, settings)
    assert not any(KTH_SIM in p.payload for p in store.scroll(USERS))
    askers = [p["user_id"] for p in people[:40]]
    from_blocks = {u: recommend(u, 10, store=store, settings=settings) for u in askers}
    _to_payloads(store)
    from_payloads = {u: recommend(u, 10, store=store, settings=settings) for u in askers}
    assert sum(len(m) for m in from_blocks.values()) > 200
    for u in askers:
        assert [m.user_id for m in from_blocks[u]] == [m.user_id for m in from_payloads[u]], u
        # (a payload float can come back one ulp off from Edge's JSON round trip)
        np.testing.assert_allclose([m.score for m in from_blocks[u]], [m.score for m in from_payloads[u]], rtol=1e-12)
    # The reciprocity term matters here: without it the lists differ.
    plain = settings.model_copy(update={"recommend": settings.recommend.model_copy(update={"reciprocity_weight": 0.0})})
    assert any(
        [m.user_id for m in recommend(u, 10, store=store, settings=plain)] != [m.user_id for m in from_payloads[u]]
        for u in askers
    )


def test_a_like_writes_one_patch_that_another_process_reads(reciprocity_db: tuple[Store, Settings]) -> None:
    store, settings = reciprocity_db
    populated(store, settings, 200, seed=31)
    v0 = read_version(store)
    assert v0 is not None and v0.gen == 0 and v0.rows == 200
    n_points = store.count(META, BLOCK_POINTS)
    record_likes(store, "u150", ["u7", "u8", "u9"], settings=settings)
    v1 = read_version(store)
    assert v1 is not None and (v1.set_id, v1.gen, v1.rows) == (v0.set_id, 1, 200)
    assert store.count(META, BLOCK_POINTS) == n_points + 1  # one patch point, not a rewrite
    mine = stored(store)
    forget(store)  # what a process that did not write it reads: the set and its patch
    theirs = stored(store)
    assert mine is not None and theirs is not None and mine.version == theirs.version
    np.testing.assert_array_equal(mine.kth, theirs.kth)
    np.testing.assert_array_equal(mine.ids, theirs.ids)
    assert_same_as_full_pass(store, settings)


def test_patches_are_folded_into_a_new_set(reciprocity_db: tuple[Store, Settings], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store, settings = reciprocity_db
    populated(store, settings, 120, seed=32)
    monkeypatch.setattr(blocks_mod, "PATCH_GENS", 2)
    first = read_version(store)
    assert first is not None
    record_likes(store, "u50", ["u1"], settings=settings)
    record_likes(store, "u51", ["u2"], settings=settings)
    v = read_version(store)
    assert v is not None and v.set_id == first.set_id and v.gen == 2
    record_likes(store, "u52", ["u3"], settings=settings)  # a third patch: the set is rewritten instead
    v = read_version(store)
    assert v is not None and v.set_id != first.set_id and v.gen == 0
    assert store.count(META, BLOCK_POINTS) == v.chunks  # the old set and its patches are gone
    forget(store)
    assert_same_as_full_pass(store, settings)


def test_the_cache_after_statistics_moved_under_it_stays_exact(reciprocity_db: tuple[Store, Settings]) -> None:
    """A like's patch is written after the refresh cache was saved (its statistics version is older): the
    incremental pass takes the blocks' statistics, recomputes the users whose row moved, and is exact."""
    store, settings = reciprocity_db
    rng = populated(store, settings, 300, seed=33)
    record_likes(store, "u120", ["u4", "u5"], settings=settings)
    store.upsert(USERS, [user_point(f"new{i}", rng) for i in range(10)])
    rep = refresh_changed(store, settings, arrived=[f"new{i}" for i in range(10)])
    assert rep.cache == "used" and rep.recomputed < 100
    assert_same_as_full_pass(store, settings)


def test_a_killed_write_leaves_no_block_behind(reciprocity_db: tuple[Store, Settings]) -> None:
    """Blocks of a set whose version point was never written (a kill mid-write) are removed by the next set."""
    store, settings = reciprocity_db
    populated(store, settings, 100, seed=34)
    s = stored(store)
    assert s is not None
    blocks_mod._upsert_blocks(store, "deadbeef", [("00000000-0000-4000-8000-0000000000ff", blocks_mod._block(s, 0, 5))])
    refresh(store, settings)  # nothing changed: the set stays, and so does the orphan
    store.upsert(USERS, [user_point("late", np.random.default_rng(1))])
    refresh_changed(store, settings, arrived=["late"])
    v = read_version(store)
    assert v is not None and store.count(META, BLOCK_POINTS) == v.chunks


def test_delete_user_leaves_no_row_of_theirs_in_any_block(reciprocity_db: tuple[Store, Settings]) -> None:
    store, settings = reciprocity_db
    populated(store, settings, 150, seed=35)
    record_likes(store, "u60", ["u61"], settings=settings)  # a patch holding u60's row
    for victim in ("u60", "u61"):
        assert delete_user(store, victim, settings=settings) == 1
    forget(store)
    s, v = stored(store), read_version(store)
    assert s is not None and v is not None and v.gen == 0 and len(s) == 148
    assert (s.rows([user_point_id("u60"), user_point_id("u61")]) == -1).all()
    raw = b"".join(
        blocks_mod.decode(p.payload[blocks_mod.BLOCK_KEY]["ids"]).tobytes() for p in store.scroll(META, BLOCK_POINTS)
    )
    assert user_point_id("u60").encode() not in raw and user_point_id("u61").encode() not in raw
    assert user_point_id("u62").encode() in raw  # (the check can find an id that is there)
    assert_same_as_full_pass(store, settings)


def test_the_incremental_pass_reads_no_block_when_the_cache_matches_them(
    reciprocity_db: tuple[Store, Settings], monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The refresh cache records the statistics version it was saved with: when the blocks are still that
    version, a new process's incremental pass takes the statistics from the cache and reads no block."""
    store, settings = reciprocity_db
    rng = populated(store, settings, 200, seed=36)
    store.upsert(USERS, [user_point(f"new{i}", rng) for i in range(8)])
    forget(store)  # a new process: no copy of the blocks in memory

    def no_read(*_: object) -> None:
        raise AssertionError("the blocks were read")

    monkeypatch.setattr(blocks_mod, "_load", no_read)
    rep = refresh_changed(store, settings, arrived=[f"new{i}" for i in range(8)])
    assert rep.cache == "used" and rep.merged > 0
    monkeypatch.undo()
    forget(store)
    assert_same_as_full_pass(store, settings)
