"""The batch pass behind cheap rank reciprocity: each user's ``kth_sim``, stored in their payload.

``kth_sim`` of user B is the cosine similarity between B's taste (B's mean vector, or the ``taste`` of
``engine.likes`` when B has a like history: what B's own list is ranked by) and B's K-th nearest
*compatible* user (``K = recommend.reciprocity_k``; compatibility as in ``engine.compatibility``).
"Is A within B's top-K?" then becomes ``cos(t_B, v_A) >= kth_sim_B``: one comparison at query time instead
of a reverse ANN query per candidate (the same idea as CSLS's per-point neighbourhood radius against hubness).
A user with fewer than K compatible users gets ``kth_sim = -1`` (everyone compatible is in their top-K).

``refresh`` also recomputes each user's ``taste`` (``engine.likes``) from their stored like history and the
current vectors. The ingestion job calls it after each batch ingestion, before ``store.optimize()``.

Cost: one ``scroll`` of the users collection with vectors, then exact brute force in numpy
(:func:`compatible_kth`): users are grouped by (gender, seeking, age, age window), and each group is
scored with one matrix product against exactly the users compatible with it, so the work is about
``n × (compatible users per user) × dim`` multiply-adds, not ``n² × dim``. It replaced one filtered ANN
query per user (98.8 s at 10,000 users, a quarter of an hour projected at 100,000; docs/scaling.md has
the figures), is exact rather than approximate, and needs the users' vectors in memory
(``n × dim × 4`` bytes). Only the points whose statistics changed are written, and only those payload
keys (``Store.set_payload``: on Edge the points keep their HNSW index, so no ``optimize()`` is needed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from engine.compatibility import Profile
from engine.errors import InvalidInput
from engine.likes import LIKED_FIELD, TASTE_FIELD, taste_payload, usable_vector
from engine.schema import USERS, user_point_id
from engine.settings import Settings
from engine.store.base import Point, ScoredPoint, Store

log = logging.getLogger(__name__)

KTH_FIELD = "kth_sim"
KTH_K_FIELD = "kth_k"  # the K the stored kth_sim was computed with (a changed setting makes it stale)
NO_KTH = -1.0
_BLOCK_ENTRIES = 1 << 24  # similarities per block in compatible_kth (64 MB of float32)


@dataclass(frozen=True)
class RefreshReport:
    users: int  # users points with a vector that got a kth_sim
    rewritten: int  # of those, the points whose statistics changed (only these are written)
    skipped: int  # users points without a usable vector or profile
    seconds: float


def kth_from_results(results: Sequence[ScoredPoint], k: int) -> float:
    """The K-th best score of one filtered top-K result list, or ``NO_KTH`` when it has fewer than K."""
    return float(results[k - 1].score) if len(results) >= k else NO_KTH


def refresh(store: Store, settings: Settings, *, chunk: int = 2048) -> RefreshReport:
    """Recompute ``kth_sim`` (and ``taste`` where there are likes) for every user, and write them back.

    ``chunk``: most users scored in one similarity block (memory: ``chunk`` x compatible users x 4 bytes).

    Raises ``StoreUnavailable`` from the store; users without a vector or a readable profile are skipped
    (logged), not fatal, so one bad record cannot block the pass.
    """
    if chunk < 1:
        raise InvalidInput(f"chunk: must be positive, got {chunk}")
    t0 = time.perf_counter()
    k = settings.recommend.reciprocity_k
    points: list[Point] = []
    vectors: list[np.ndarray] = []
    profiles: list[Profile] = []
    skipped = 0
    for p in store.scroll(USERS, with_vectors=True):
        v = usable_vector(p)
        if v is None:
            skipped += 1
            continue
        try:
            prof = Profile.from_payload(p.payload, where=f"users point {p.id}")
        except InvalidInput as exc:
            log.warning("reciprocity refresh skips a user: %s", exc)
            skipped += 1
            continue
        points.append(p)
        vectors.append(v)
        profiles.append(prof)

    # One (n, d) matrix; the points keep only their payloads (at 100,000 users the per-point copies would
    # double the pass's memory).
    matrix = np.stack(vectors) if vectors else np.zeros((0, 1), np.float32)
    del vectors
    for p in points:
        p.vector = None

    # Tastes first: each user's list is ranked by their taste, so kth_sim is measured with it.
    index = {user_point_id(prof.user_id): i for i, prof in enumerate(profiles)}
    blend = settings.recommend.taste_blend
    tastes: list[list[float] | None] = []
    for i, p in enumerate(points):
        liked_pids = (user_point_id(str(u)) for u in (p.payload or {}).get(LIKED_FIELD) or [])
        liked = [index[pid] for pid in liked_pids if pid in index]
        liked_vecs = matrix[liked] if liked else None
        tastes.append(taste_payload(matrix[i], liked_vecs, blend))
    kth = compatible_kth(
        matrix,
        profiles,
        k,
        queries={i: np.asarray(t, dtype=np.float32) for i, t in enumerate(tastes) if t is not None},
        block=chunk,
        progress=settings.progress,
    )

    changes: dict[str, dict[str, Any]] = {}
    for i, p in enumerate(points):
        old = p.payload or {}
        if not _changed(old, float(kth[i]), k, tastes[i]):
            continue  # rewriting an unchanged point would only cost a write
        # Only these keys change (a partial update keeps the vector and its index; None deletes the key).
        change: dict[str, Any] = {KTH_FIELD: float(kth[i]), KTH_K_FIELD: k}
        if tastes[i] is not None or TASTE_FIELD in old:
            change[TASTE_FIELD] = tastes[i]
        changes[p.id] = change
    batch = settings.ingest.write_batch_size
    ids = list(changes)
    for start in range(0, len(ids), batch):
        store.set_payload(USERS, {pid: changes[pid] for pid in ids[start : start + batch]})
    seconds = time.perf_counter() - t0
    log.info(
        "reciprocity refresh: %d users (K=%d), %d rewritten, in %.1f s; %d skipped",
        len(points), k, len(changes), seconds, skipped,
    )
    return RefreshReport(users=len(points), rewritten=len(changes), skipped=skipped, seconds=seconds)


def _changed(old: dict[str, Any], kth: float, k: int, taste: list[float] | None) -> bool:
    """Whether the stored statistics differ from the new ones (beyond float noise)."""
    old_kth, old_taste = old.get(KTH_FIELD), old.get(TASTE_FIELD)
    if not isinstance(old_kth, int | float) or abs(float(old_kth) - kth) > 1e-6 or old.get(KTH_K_FIELD) != k:
        return True
    if (old_taste is None) != (taste is None):
        return True
    if taste is None:
        return False
    before = np.asarray(old_taste, dtype=np.float64)
    return before.shape != (len(taste),) or not np.allclose(before, taste, atol=1e-6)


def _gender_codes(profiles: Sequence[Profile]) -> tuple[np.ndarray, np.ndarray]:
    """Each user's gender as a bit (1 << index) and what they seek as a bit mask, over all genders seen."""
    genders = sorted({p.gender for p in profiles} | {s for p in profiles for s in p.seeking})
    if len(genders) > 62:
        raise InvalidInput(f"profiles: {len(genders)} distinct genders; at most 62 are supported")
    bit = {g: 1 << i for i, g in enumerate(genders)}
    gender = np.array([bit[p.gender] for p in profiles], dtype=np.int64)
    seeks = np.array([sum(bit[s] for s in set(p.seeking)) for p in profiles], dtype=np.int64)
    return gender, seeks


def compatible_kth(
    vectors: np.ndarray,
    profiles: Sequence[Profile],
    k: int,
    *,
    queries: dict[int, np.ndarray] | None = None,
    block: int = 2048,
    progress: bool = False,
) -> np.ndarray:
    """Every user's ``kth_sim`` by exact brute force, scoring each user only against who can be compatible.

    ``vectors`` (n, d) float32 unit rows (the users' mean vectors, what candidates are judged by);
    ``profiles`` aligned with them; ``queries``: row -> (d,) unit vector ranking that user's list instead of
    their own vector (their taste, ``engine.likes``). Returns (n,) float64: the K-th best similarity over
    the user's compatible users (``engine.compatibility``; never themselves), ``NO_KTH`` with fewer than K.

    Users sharing (gender, seeking, age, age window) share every constraint, so each such group is scored
    with one matrix product against exactly its compatible users (candidates sorted by age: the window is
    one slice). ``block`` caps the rows per product.
    """
    n = len(profiles)
    if vectors.shape[0] != n:
        raise InvalidInput(f"vectors: {vectors.shape[0]} rows for {n} profiles")
    if k < 1 or block < 1:
        raise InvalidInput(f"k and block must be positive, got k={k}, block={block}")
    out = np.full(n, NO_KTH, dtype=np.float64)
    if n == 0:
        return out
    queries = queries or {}
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    gender, seeks = _gender_codes(profiles)
    age = np.array([p.age for p in profiles], dtype=np.int64)
    lo = np.array([p.age_min for p in profiles], dtype=np.int64)
    hi = np.array([p.age_max for p in profiles], dtype=np.int64)

    # Groups of rows with the same (gender, seeking, age, age window), in one sort.
    order = np.lexsort((hi, lo, age, seeks, gender))
    key = np.stack([gender[order], seeks[order], age[order], lo[order], hi[order]], axis=1)
    starts = np.flatnonzero(np.r_[True, np.any(key[1:] != key[:-1], axis=1)])
    bounds = np.r_[starts, n]
    # Candidates sorted by age: the group's age window is then one contiguous slice.
    by_age = np.argsort(age, kind="stable")
    age_sorted = age[by_age]
    slot = np.full(n, -1, dtype=np.int64)
    bar = tqdm(total=n, desc="reciprocity", unit="user", disable=not progress)
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        rows_all = order[s:e]
        g, want, a, lo_g, hi_g = (int(x) for x in key[s])
        left, right = np.searchsorted(age_sorted, [lo_g, hi_g + 1])
        pool = by_age[left:right]
        # The group's window is the slice; both genders' constraints and the group's age in their window.
        pool = pool[((gender[pool] & want) != 0) & ((seeks[pool] & g) != 0) & (lo[pool] <= a) & (hi[pool] >= a)]
        # Members share every attribute: either all of them are in the pool (self-compatible) or none.
        self_in = (g & want) != 0 and lo_g <= a <= hi_g
        if len(pool) - int(self_in) < k:
            bar.update(len(rows_all))
            continue  # nobody in the group has K compatible users
        pool_vecs = vectors[pool]
        if self_in:
            slot[pool] = np.arange(len(pool))  # where each member sits in the pool
        step = max(1, min(block, _BLOCK_ENTRIES // len(pool)))
        kth_col = len(pool) - k
        for b in range(0, len(rows_all), step):
            rows = rows_all[b : b + step]
            q = vectors[rows]
            if queries:
                for j, r in enumerate(rows):
                    t = queries.get(int(r))
                    if t is not None:
                        q[j] = t
            sims = q @ pool_vecs.T  # (rows, pool) float32
            if self_in:
                sims[np.arange(len(rows)), slot[rows]] = -np.inf  # never oneself
            out[rows] = np.partition(sims, kth_col, axis=1)[:, kth_col]
        if self_in:
            slot[pool] = -1
        bar.update(len(rows_all))
    bar.close()
    return out


def exact_kth(
    vectors: np.ndarray, profiles: Sequence[Profile], k: int, *, block: int | None = None
) -> np.ndarray:
    """``kth_sim`` of every user by plain exact brute force over all pairs in numpy: the reference
    :func:`compatible_kth` (what ``refresh`` runs) is tested against; same definition for users without a
    like history (it uses the mean vectors, not tastes).

    ``vectors`` (n, d) float32 unit rows, ``profiles`` aligned with them. Returns (n,) float64.
    Memory: one (block, n) similarity block at a time (default: about 32 M entries).
    """
    n = len(profiles)
    if block is None:
        block = max(1, min(1024, (1 << 25) // max(n, 1)))
    genders = sorted({p.gender for p in profiles} | {s for p in profiles for s in p.seeking})
    gidx = {g: i for i, g in enumerate(genders)}
    gender = np.array([gidx[p.gender] for p in profiles])
    seeks = np.zeros((n, len(genders)), dtype=bool)
    for i, p in enumerate(profiles):
        seeks[i, [gidx[s] for s in p.seeking]] = True
    age = np.array([p.age for p in profiles])
    lo = np.array([p.age_min for p in profiles])
    hi = np.array([p.age_max for p in profiles])
    out = np.full(n, NO_KTH, dtype=np.float64)
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows = np.arange(start, stop)
        sims = vectors[start:stop] @ vectors.T
        ok = (
            seeks[rows][:, gender]  # candidate's gender sought by the row user
            & seeks[:, gender[rows]].T  # row user's gender sought by the candidate
            & (age[None, :] >= lo[rows, None])
            & (age[None, :] <= hi[rows, None])
            & (age[rows, None] >= lo[None, :])
            & (age[rows, None] <= hi[None, :])
        )
        ok[np.arange(stop - start), rows] = False
        sims = np.where(ok, sims, -np.inf)
        counts = ok.sum(axis=1)
        has_k = counts >= k
        if np.any(has_k):
            part = -np.partition(-sims[has_k], k - 1, axis=1)[:, k - 1]
            out[rows[has_k]] = part
    return out
