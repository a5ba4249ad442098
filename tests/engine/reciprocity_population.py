"""Random users for the reciprocity passes' tests, and the check they all make: the statistics stored equal
what a full pass computes. The ``reciprocity_db`` fixture (tests/engine/conftest.py) sets its store up with this
module's ``DIM`` and ``K``."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.likes import record_likes
from engine.reciprocity.blocks import stored
from engine.reciprocity.full import refresh
from engine.schema import KTH_SIM, KTH_TOP, USERS, user_point_id, window_of
from engine.settings import Settings
from engine.store import Store
from engine.store.base import Point

DIM = 16
K = 12  # above the window kept per user (TOP_KEEP), so merges that shrink the window are exercised too
GENDERS = ("female", "male", "nonbinary")


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
    """Every users point's payload with its stored statistics (``engine.reciprocity.blocks``, or the payload's
    own on a store written before the blocks) under the payload keys."""
    blocks = stored(store)
    return {p.id: {**p.payload, **(blocks.payload_of(p.id) if blocks else {})} for p in store.scroll(USERS)}


def populated(store: Store, settings: Settings, n: int, seed: int) -> np.random.Generator:
    rng = np.random.default_rng(seed)
    store.upsert(USERS, [user_point(f"u{i}", rng) for i in range(n)])
    for i in range(0, 40, 4):  # some like histories: those users' lists are ranked by their taste
        record_likes(store, f"u{i}", [f"u{i + 1}", f"u{i + 2}"], settings=settings)
    refresh(store, settings)
    return rng


def disagreements(store: Store, settings: Settings) -> list[str]:
    """Users whose stored statistics a full pass changes: a different ``kth_sim``, or a stored window that
    is not the tail of the full pass's (an incremental window may be shorter: it loses an entry each time an
    arrival lands above it, and the full pass fills it again). Runs the full pass."""
    before = stats(store)
    refresh(store, settings)
    wrong = []
    for pid, payload in stats(store).items():
        old = before[pid]
        window, full = window_of(old[KTH_TOP]), window_of(payload[KTH_TOP])
        assert window is not None and full is not None, f"{old['user_id']}: kth_top unreadable"
        tail = full[len(full) - len(window) :]
        same_kth = abs(payload[KTH_SIM] - old[KTH_SIM]) <= 1e-6
        if not same_kth or len(tail) != len(window) or not np.allclose(tail, window, atol=1e-6):
            wrong.append(old["user_id"])
    return wrong


def assert_same_as_full_pass(store: Store, settings: Settings) -> None:
    assert disagreements(store, settings) == []
