"""compatible_kth (what refresh runs) against a plain all-pairs reference written here, on populations with
varied genders, seeking sets and age windows, tastes that differ from the mean vectors, and tiny blocks; and
the partial payload update refresh writes with, on each embedded backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.compatibility import Profile
from engine.errors import InvalidInput
from engine.reciprocity.topk import NO_KTH, compatible_kth, exact_kth
from engine.schema import USERS, user_point_id
from engine.settings import Settings
from engine.store import open_store
from engine.store.base import Point

GENDERS = ("female", "male", "nonbinary")


def population(n: int, dim: int, seed: int) -> tuple[np.ndarray, list[Profile]]:
    rng = np.random.default_rng(seed)
    profiles = []
    for i in range(n):
        g = GENDERS[int(rng.integers(3))]
        age = int(rng.integers(18, 70))
        seeking = tuple(sorted(set(rng.choice(GENDERS, size=int(rng.integers(1, 4))).tolist())))
        lo, hi = max(18, age - int(rng.integers(0, 20))), age + int(rng.integers(0, 20))
        profiles.append(Profile(f"u{i}", g, age, seeking, lo, hi))
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True), profiles


def reference(vectors: np.ndarray, queries: dict[int, np.ndarray], profiles: list[Profile], k: int) -> np.ndarray:
    """The definition, one user at a time in plain Python/numpy."""
    out = np.full(len(profiles), NO_KTH)
    for i, p in enumerate(profiles):
        q = queries.get(i, vectors[i])
        sims = sorted(
            (float(q @ vectors[j]) for j, o in enumerate(profiles) if j != i and p.compatible(o)), reverse=True
        )
        if len(sims) >= k:
            out[i] = sims[k - 1]
    return out


@pytest.mark.parametrize("k", [1, 5, 40])
def test_compatible_kth_equals_all_pairs_reference(k: int) -> None:
    vectors, profiles = population(600, 16, seed=k)
    rng = np.random.default_rng(99)
    tastes = {}
    for i in rng.choice(len(profiles), 100, replace=False):
        t = vectors[i] + rng.standard_normal(16).astype(np.float32)
        tastes[int(i)] = (t / np.linalg.norm(t)).astype(np.float32)
    expected = reference(vectors, tastes, profiles, k)
    got = compatible_kth(vectors, profiles, k, queries=tastes, block=7)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert 50 < np.sum(expected > NO_KTH) < len(profiles)  # both cases (K reached or not) are exercised
    # Without tastes it is the mean-vector statistic of exact_kth.
    np.testing.assert_allclose(compatible_kth(vectors, profiles, k), exact_kth(vectors, profiles, k), atol=1e-5)


def test_compatible_kth_bad_input_and_empty() -> None:
    vectors, profiles = population(10, 4, seed=0)
    with pytest.raises(InvalidInput, match="rows"):
        compatible_kth(vectors[:5], profiles, 3)
    with pytest.raises(InvalidInput, match="positive"):
        compatible_kth(vectors, profiles, 0)
    assert compatible_kth(np.zeros((0, 4), np.float32), [], 3).shape == (0,)


@pytest.mark.parametrize("backend", ["edge", "local"])
def test_set_payload_changes_only_the_named_keys(backend: str, tmp_path: Path) -> None:
    settings = Settings(store_path=tmp_path / "q", store_backend=backend, progress=False)  # type: ignore[call-arg]
    with open_store(settings) as store:
        store.setup("test-encoder", 4)
        v = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)
        pid = user_point_id("a")
        store.upsert(USERS, [Point(id=pid, vector=v, payload={"user_id": "a", "taste": [1.0], "kth_sim": 0.1})])
        store.set_payload(USERS, {pid: {"kth_sim": 0.5, "kth_k": 7, "taste": None}, user_point_id("ghost"): {"x": 1}})
        (got,) = store.retrieve(USERS, [pid], with_vectors=True)
        assert got.payload == {"user_id": "a", "kth_sim": 0.5, "kth_k": 7}  # taste deleted, user_id kept
        assert got.vector is not None and np.allclose(got.vector, v)  # the vector is untouched
        assert store.retrieve(USERS, [user_point_id("ghost")]) == []  # a missing id is skipped, not created
