"""The refresh cache (engine.reciprocity.table): the incremental pass starts from the users table the previous
pass saved beside the store, re-reads only the users journaled since, and still equals a full pass. A cache
that may be stale is never used: a lost journal, another token in META, a count that disagrees, a kill
between the writes and the save; and a deleted user's vector and id do not stay in it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import engine.reciprocity.incremental as reciprocity_incremental
from engine.likes import record_likes
from engine.reciprocity.full import refresh
from engine.reciprocity.incremental import refresh_changed
from engine.reciprocity.table import cache_files, load
from engine.schema import USERS, user_point_id
from engine.settings import Settings
from engine.store import Store
from engine.store.cache import journal_path
from engine.users import delete_user
from tests.engine.reciprocity_population import DIM, assert_same_as_full_pass, populated, user_point


def test_a_full_pass_saves_the_cache_and_writes_are_journaled(reciprocity_db: tuple[Store, Settings]) -> None:
    store, settings = reciprocity_db
    rng = populated(store, settings, 200, seed=11)
    folder, token = store.cache_folder(), store.cache_token()
    assert folder is not None and token is not None
    assert {f.name for f in cache_files(folder)} == {f"users-{token}", f"journal-{token}"}
    loaded = load(store)
    assert loaded is not None and len(loaded[0]) == 200 and loaded[1] == []
    store.upsert(USERS, [user_point("late", rng)])
    store.set_payload(USERS, {user_point_id("u3"): {"note": 1}})
    assert journal_path(folder, token).read_text().split() == [user_point_id("late"), user_point_id("u3")]


def test_incremental_pass_from_the_cache_equals_a_full_pass(reciprocity_db: tuple[Store, Settings]) -> None:
    """Arrivals, rewritten users (new vector and profile) and new like histories, none of them named to
    the pass: the journal alone tells it what changed."""
    store, settings = reciprocity_db
    rng = populated(store, settings, 400, seed=12)
    store.upsert(USERS, [user_point(f"new{i}", rng) for i in range(20)])
    store.upsert(USERS, [user_point(f"u{i}", rng) for i in range(100, 106)])
    for u in ("u301", "u302"):
        record_likes(store, u, ["new1", "u5"], settings=settings)
    rep = refresh_changed(store, settings)
    assert rep.cache == "used"
    assert rep.users == 420 and rep.recomputed < 200 and rep.merged > 0
    assert_same_as_full_pass(store, settings)
    # And again from the cache this pass saved.
    store.upsert(USERS, [user_point(f"more{i}", rng) for i in range(10)])
    rep = refresh_changed(store, settings, arrived=[f"more{i}" for i in range(10)])
    assert rep.cache == "used" and rep.users == 430
    assert_same_as_full_pass(store, settings)


def test_a_lost_journal_or_another_token_is_not_trusted(reciprocity_db: tuple[Store, Settings]) -> None:
    store, settings = reciprocity_db
    rng = populated(store, settings, 300, seed=13)
    folder, token = store.cache_folder(), store.cache_token()
    assert folder is not None and token is not None
    journal_path(folder, token).unlink()
    # The write finds no journal to append to: it drops the cache instead of writing unrecorded.
    store.upsert(USERS, [user_point("late0", rng)])
    assert store.cache_token() is None and cache_files(folder) == []
    rep = refresh_changed(store, settings)  # no arrival named: found by its missing statistics
    assert rep.cache == "no cache"
    assert_same_as_full_pass(store, settings)
    # A token in META naming no file on disk (or someone else's files).
    store.set_cache_token("0123456789abcdef")
    store.upsert(USERS, [user_point("late1", rng)])
    assert refresh_changed(store, settings).cache == "no cache"
    assert_same_as_full_pass(store, settings)


def test_a_count_that_disagrees_is_not_trusted(
    reciprocity_db: tuple[Store, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write the journal missed (here: one made with journaling switched off) shows in the point count."""
    store, settings = reciprocity_db
    rng = populated(store, settings, 300, seed=14)
    monkeypatch.setattr(type(store), "_before_write", lambda self, collection, ids: None)
    store.upsert(USERS, [user_point(f"late{i}", rng) for i in range(3)])
    monkeypatch.undo()
    rep = refresh_changed(store, settings)
    assert rep.cache.startswith("the users collection holds 303 points")
    assert_same_as_full_pass(store, settings)


def test_a_kill_between_the_writes_and_the_save_leaves_nothing_stale(
    reciprocity_db: tuple[Store, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pass wrote statistics, then died before saving its table: the old cache's journal lists every
    write, so the next pass re-reads them (or scrolls) and the result is still exact."""
    store, settings = reciprocity_db
    rng = populated(store, settings, 300, seed=15)
    old_token = store.cache_token()
    store.upsert(USERS, [user_point(f"new{i}", rng) for i in range(15)])

    def killed(*_: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(reciprocity_incremental, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        refresh_changed(store, settings)
    monkeypatch.undo()
    assert store.cache_token() == old_token
    store.upsert(USERS, [user_point("late", rng)])
    refresh_changed(store, settings)
    assert_same_as_full_pass(store, settings)


def test_a_deleted_user_leaves_no_trace_in_the_cache(reciprocity_db: tuple[Store, Settings]) -> None:
    store, settings = reciprocity_db
    populated(store, settings, 200, seed=16)
    folder = store.cache_folder()
    assert folder is not None and store.cache_token() is not None
    (victim,) = store.retrieve(USERS, [user_point_id("u77")], with_vectors=True)
    assert victim.vector is not None
    assert delete_user(store, "u77", settings=settings) == 1
    assert store.cache_token() is None
    needles = [victim.vector.astype(np.float32).tobytes(), b"u77", user_point_id("u77").encode()]
    for f in folder.rglob("*"):
        data = f.read_bytes() if f.is_file() else b""
        assert not any(n in data for n in needles), f
    # The next pass scrolls, and saves a cache without them.
    refresh(store, settings)
    loaded = load(store)
    assert loaded is not None and user_point_id("u77") not in set(loaded[0].ids.tolist())


def test_setup_keeps_the_cache_and_a_rebuild_drops_it(reciprocity_db: tuple[Store, Settings]) -> None:
    store, settings = reciprocity_db
    populated(store, settings, 100, seed=17)
    token, folder = store.cache_token(), store.cache_folder()
    assert token is not None and folder is not None
    store.setup("test-encoder", DIM)  # what every ingestion does first
    assert store.cache_token() == token and load(store) is not None
    store.setup("test-encoder", DIM, rebuild=True)
    assert store.cache_token() is None and cache_files(folder) == []
