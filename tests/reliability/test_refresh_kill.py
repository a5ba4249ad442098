"""An incremental reciprocity refresh killed (SIGKILL) half-way through writing statistics (their blocks
upserted, not the version point naming them; or everything written but the refresh cache): the next pass
still starts from the refresh cache (whose journal lists every users point written since it was saved, and
which records the statistics version it matches: when the blocks moved since, the users whose row moved are
recomputed), leaves exactly what a full pass computes, and no block of the killed pass behind. Nothing
acknowledged is lost: every user written before the kill is still there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.filters import Filter, MatchAny
from engine.reciprocity.blocks import read_version
from engine.reciprocity.incremental import refresh_changed
from engine.schema import META, USERS
from engine.settings import Settings
from engine.store import open_store
from tests.engine.reciprocity_population import DIM, K, assert_same_as_full_pass, populated, user_point

CHILD = """
import os, signal, sys
from pathlib import Path
import engine.reciprocity.blocks as blocks
import engine.reciprocity.incremental as inc
from engine.settings import Settings
from engine.store import open_store

settings = Settings(store_path=Path(sys.argv[1]), store_backend=sys.argv[2], progress=False)
store = open_store(settings)

def die(*args, **kwargs):
    print(blocks.read_version(store), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[3] == "blocks":  # the new statistics' blocks written, not the version point naming them
    blocks._write_version = die
else:  # the statistics written (blocks and version point), not the refresh cache
    inc.save = die
inc.refresh_changed(store, settings)
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["blocks", "save"])
@pytest.mark.parametrize("backend", ["edge", "local"])
def test_refresh_killed_while_writing_is_repaired_exactly_from_the_cache(
    backend: str, where: str, tmp_path: Path
) -> None:
    path = tmp_path / "store"
    settings = Settings(store_path=path, store_backend=backend, progress=False)  # type: ignore[call-arg]
    settings = settings.model_copy(update={"recommend": settings.recommend.model_copy(update={"reciprocity_k": K})})
    with open_store(settings) as store:
        store.setup("test-encoder", DIM)
        rng = populated(store, settings, 300, seed=21)  # users, likes, a full pass: the cache is saved
        token, version = store.cache_token(), read_version(store)
        store.upsert(USERS, [user_point(f"new{i}", rng) for i in range(12)])
    assert token is not None and version is not None
    env = {**os.environ, "MATCHER_RECOMMEND__RECIPROCITY_K": str(K), "PYTHONPATH": os.getcwd()}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), backend, where], env=env, capture_output=True, text=True, timeout=300
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    with open_store(settings) as store:
        assert store.cache_token() == token  # the killed pass never recorded a new cache
        assert store.count(USERS) == 312
        now = read_version(store)
        assert now is not None
        if where == "blocks":
            assert now == version  # the half-written set is named by nothing
        else:
            assert now.set_id != version.set_id  # the new statistics are stored, the cache is older than them
        rep = refresh_changed(store, settings)
        assert rep.cache == "used"
        assert_same_as_full_pass(store, settings)
        v = read_version(store)
        assert (
            v is not None and store.count(META, Filter(must=(MatchAny.of("kind", ["reciprocity_stats"]),))) == v.chunks
        )
