"""Replay of a like log against a real store filled by the ingestion job with the tiny encoder."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InvalidInput
from engine.schema import USERS
from engine.settings import Settings
from engine.store import Store, open_store
from evaluation.replay import read_like_log, replay

HEADER = ("viewer_id", "viewed_id", "liked")


def _write(path: Path, rows: Sequence[tuple[str, ...]], header: tuple[str, ...] = HEADER) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_read_like_log_errors(tmp_path: Path) -> None:
    rows = [("a", "b", "1"), ("a", "c", "false"), ("b", "a", "Yes")]
    log = read_like_log(_write(tmp_path / "ok.csv", rows))
    assert log.liked.tolist() == [True, False, True]
    with pytest.raises(InvalidInput, match=r"bad.csv:3: liked must be"):
        read_like_log(_write(tmp_path / "bad.csv", [("a", "b", "1"), ("a", "c", "maybe")]))
    with pytest.raises(InvalidInput, match="missing column"):
        read_like_log(_write(tmp_path / "cols.csv", [("a", "b")], header=("viewer_id", "viewed_id")))
    with pytest.raises(InvalidInput, match="viewer_id equals viewed_id"):
        read_like_log(_write(tmp_path / "self.csv", [("a", "a", "1")]))


@pytest.fixture
def filled(tmp_path: Path, demo_dir: Path, tiny_encoder) -> Iterator[tuple[Store, Settings]]:
    from ingestion.job import run_ingest

    settings = Settings(store_path=tmp_path / "store", progress=False)  # type: ignore[call-arg]
    store = open_store(settings)
    try:
        run_ingest(demo_dir, demo_dir / "metadata.csv", settings=settings, encoder=tiny_encoder, store=store)
        yield store, settings
    finally:
        store.close()


def test_replay_scores_logged_pairs(tmp_path: Path, filled: tuple[Store, Settings]) -> None:
    store, settings = filled
    points = list(store.scroll(USERS, with_vectors=True))
    ids = [str(p.payload["user_id"]) for p in points]
    vec = np.stack([np.asarray(p.vector, dtype=np.float64) for p in points])
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    sim = vec @ vec.T
    # A log whose likes are exactly "the one-sided similarity is above the median": that score must rank
    # the likes perfectly (AUC 1), and its top-k must be liked at least as often as the rest.
    rows = []
    med = float(np.median(sim[~np.eye(len(ids), dtype=bool)]))
    for i, a in enumerate(ids):
        for j, b in enumerate(ids):
            if i != j:
                rows.append((a, b, "1" if sim[i, j] > med else "0"))
    rows.append(("nobody", ids[0], "1"))  # a viewer not in the store is skipped, not fatal
    res = replay(_write(tmp_path / "log.csv", rows), store=store, settings=settings, k=5, n_boot=100)
    assert res.n_pairs == len(ids) * (len(ids) - 1)
    assert res.n_skipped == 1
    assert res.n_viewers == len(ids)
    by = {s.score: s for s in res.scores}
    one = by["one-sided similarity"]
    assert one.auc.value == pytest.approx(1.0)
    assert one.topk_like_rate.value >= res.base_like_rate.value
    eng = by["engine (reciprocal)"]
    assert 0.0 <= eng.auc.lo <= eng.auc.value <= eng.auc.hi <= 1.0
    assert "| engine (reciprocal) |" in res.table()
    assert '"n_pairs"' in res.to_json()


def test_replay_needs_users_in_the_store(tmp_path: Path, filled: tuple[Store, Settings]) -> None:
    store, settings = filled
    log = _write(tmp_path / "log.csv", [("x", "y", "1"), ("y", "x", "0")])
    with pytest.raises(InvalidInput, match="no logged pair has both users in the store"):
        replay(log, store=store, settings=settings)
