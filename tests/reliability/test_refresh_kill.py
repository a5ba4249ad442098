"""An incremental reciprocity refresh killed (SIGKILL) half-way through writing statistics: the next pass
still starts from the refresh cache (whose journal lists every write made since it was saved, those of the
killed pass included), and leaves exactly what a full pass computes. Nothing acknowledged is lost: every
user written before the kill is still there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.reciprocity.incremental import refresh_changed
from engine.schema import USERS
from engine.settings import Settings
from engine.store import open_store
from tests.engine.reciprocity_population import DIM, K, assert_same_as_full_pass, populated, user_point

CHILD = """
import os, signal, sys
from pathlib import Path
import engine.reciprocity.incremental as inc
from engine.settings import Settings
from engine.store import open_store

settings = Settings(store_path=Path(sys.argv[1]), store_backend=sys.argv[2], progress=False)
store = open_store(settings)
real = inc.write_changes

def dying(store, changes, batch):
    ids = list(changes)
    real(store, {i: changes[i] for i in ids[: len(ids) // 2]}, batch)
    print(len(ids) // 2, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

inc.write_changes = dying
inc.refresh_changed(store, settings)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["edge", "local"])
def test_refresh_killed_while_writing_is_repaired_exactly_from_the_cache(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "store"
    settings = Settings(store_path=path, store_backend=backend, progress=False)  # type: ignore[call-arg]
    settings = settings.model_copy(update={"recommend": settings.recommend.model_copy(update={"reciprocity_k": K})})
    with open_store(settings) as store:
        store.setup("test-encoder", DIM)
        rng = populated(store, settings, 300, seed=21)  # users, likes, a full pass: the cache is saved
        token = store.cache_token()
        store.upsert(USERS, [user_point(f"new{i}", rng) for i in range(12)])
    assert token is not None
    env = {**os.environ, "MATCHER_RECOMMEND__RECIPROCITY_K": str(K), "PYTHONPATH": os.getcwd()}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), backend], env=env, capture_output=True, text=True, timeout=300
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert int(child.stdout.split()[0]) > 10  # it had written statistics when it died
    with open_store(settings) as store:
        assert store.cache_token() == token  # the killed pass never recorded a new cache
        assert store.count(USERS) == 312
        rep = refresh_changed(store, settings)
        assert rep.cache == "used"
        assert_same_as_full_pass(store, settings)
