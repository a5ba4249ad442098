"""delete_user / store_stats on every backend; the ``matcher stats`` and ``matcher delete-user`` commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from engine.errors import InvalidInput
from engine.schema import PHOTOS, USERS, photo_point_id, user_point_id
from engine.settings import Settings
from engine.store import Point, Query, Store, open_store
from engine.users import delete_user, store_stats
from matcher.cli import main

if TYPE_CHECKING:
    from tests.engine.conftest import StoreFactory

DIM = 8


def fill(store: Store, users: dict[str, int], seed: int = 0) -> None:
    """Store each user with ``users[uid]`` photos and a mean vector, as the ingestion does."""
    rng = np.random.default_rng(seed)
    photos: list[Point] = []
    people: list[Point] = []
    for uid, n in users.items():
        v = rng.normal(size=(n, DIM)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        ids = [photo_point_id(uid, f"{uid}-{k}") for k in range(n)]
        photos += [Point(pid, v[k], {"user_id": uid, "age": 30}) for k, pid in enumerate(ids)]
        mean = v.mean(axis=0)
        payload = {"user_id": uid, "photo_ids": ids, "age": 30}
        people.append(Point(user_point_id(uid), mean / np.linalg.norm(mean), payload))
    store.upsert(PHOTOS, photos)
    store.upsert(USERS, people)


def test_delete_user_removes_every_point_of_that_user_only(store_factory: StoreFactory) -> None:
    store = store_factory.open()
    store.setup("enc", DIM)
    fill(store, {"user_001": 3, "user_002": 2, "user_003": 4})
    assert store_stats(store) == {"photos": 9, "users": 3, "encoder_id": "enc", "dim": DIM}

    assert delete_user(store, "user_002") == 3  # 2 photos + 1 user point
    assert store_stats(store)["photos"] == 7 and store_stats(store)["users"] == 2
    assert store.retrieve(USERS, [user_point_id("user_002")]) == []
    hits = store.query(PHOTOS, Query(np.ones(DIM, dtype=np.float32) / np.sqrt(DIM), 20))
    assert {h.payload["user_id"] for h in hits if h.payload} == {"user_001", "user_003"}

    assert delete_user(store, "user_002") == 0  # idempotent
    assert delete_user(store, "nobody") == 0
    with pytest.raises(InvalidInput, match="user_id"):
        delete_user(store, "  ")
    assert store_stats(store)["photos"] == 7


def test_delete_user_finds_a_user_point_without_payload(store_factory: StoreFactory) -> None:
    store = store_factory.open()
    store.setup("enc", DIM)
    v = np.eye(DIM, dtype=np.float32)[0]
    store.upsert(USERS, [Point(user_point_id("bare"), v, {})])
    assert delete_user(store, "bare") == 1
    assert store.count(USERS) == 0


def test_stats_before_setup(store_factory: StoreFactory) -> None:
    assert store_stats(store_factory.open()) == {"photos": 0, "users": 0, "encoder_id": None, "dim": None}


@pytest.mark.parametrize("backend", ["edge", "local"])
def test_stats_and_delete_user_commands(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MATCHER_QDRANT_URL", "MATCHER_STORE_BACKEND", "MATCHER_COLLECTION_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "store"
    with open_store(Settings(store_path=path, store_backend=backend)) as store:  # type: ignore[arg-type]
        store.setup("enc-cli", DIM)
        fill(store, {"user_001": 2, "user_002": 1})
    flags = ["--store", str(path), "--backend", backend]

    assert main([*flags, "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats == {"photos": 3, "users": 2, "encoder_id": "enc-cli", "dim": DIM}

    assert main([*flags, "delete-user", "user_001"]) == 0
    assert "removed 3 points" in capsys.readouterr().out
    assert main([*flags, "delete-user", "user_001"]) == 1
    assert "not in the store" in capsys.readouterr().out

    assert main([*flags, "stats"]) == 0
    out = capsys.readouterr().out
    assert "enc-cli (dim 8)" in out and "users:    1" in out and "photos:   1" in out


def test_commands_report_a_locked_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store"
    with open_store(Settings(store_path=path, store_backend="edge")) as store:
        store.setup("enc", DIM)
        assert main(["--store", str(path), "--backend", "edge", "stats"]) == 2
    err = capsys.readouterr().err
    assert "matcher stats: error:" in err and str(path) in err and "in use" in err
