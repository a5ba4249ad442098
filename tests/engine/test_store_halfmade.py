"""A half-made collection folder (a kill during create, or during ``--rebuild`` between drop and create).

Reproduced without timing: a good store whose ``users`` folder is replaced by an empty one. Opening must
not fail with the engine's raw error; commands that need the collection name it; ``setup`` (what re-running
the ingestion does) rebuilds it, and the other collections keep every acknowledged point.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.errors import MatcherError
from engine.schema import PHOTOS, USERS
from engine.settings import Settings
from engine.store import Point, open_store

DIM = 8


def _good_store(path: Path) -> None:
    store = open_store(Settings(store_path=str(path), store_backend="edge"))
    try:
        store.setup("enc-half", DIM)
        v = np.eye(DIM, dtype=np.float32)
        store.upsert(
            PHOTOS, [Point(f"00000000-0000-4000-8000-00000000000{i}", v[i], {"user_id": f"u{i}"}) for i in range(3)]
        )
        store.upsert(USERS, [Point("00000000-0000-4000-8000-0000000000a1", v[0], {"user_id": "u0"})])
    finally:
        store.close()


def test_half_made_collection_is_named_and_rebuilt_by_setup(tmp_path: Path) -> None:
    _good_store(tmp_path)
    shutil.rmtree(tmp_path / USERS)
    (tmp_path / USERS).mkdir()

    store = open_store(Settings(store_path=str(tmp_path), store_backend="edge"))  # no raw engine error
    try:
        assert store.count(PHOTOS) == 3
        with pytest.raises(MatcherError, match=rf"half-made.*{USERS}"):
            store.count(USERS)
        store.setup("enc-half", DIM)  # what re-running the ingestion does
        assert store.count(USERS) == 0
        assert store.count(PHOTOS) == 3  # nothing acknowledged elsewhere is lost
    finally:
        store.close()
    store = open_store(Settings(store_path=str(tmp_path), store_backend="edge"))
    try:
        assert store.count(USERS) == 0 and store.count(PHOTOS) == 3
    finally:
        store.close()


def test_half_made_meta_is_rebuilt_too(tmp_path: Path) -> None:
    _good_store(tmp_path)
    meta = next(p for p in tmp_path.iterdir() if p.is_dir() and p.name not in (USERS, PHOTOS, "feedback"))
    shutil.rmtree(meta)
    meta.mkdir()
    store = open_store(Settings(store_path=str(tmp_path), store_backend="edge"))
    try:
        store.setup("enc-half", DIM)
        assert store.info() is not None and store.info().dim == DIM  # type: ignore[union-attr]
        assert store.count(PHOTOS) == 3
    finally:
        store.close()
