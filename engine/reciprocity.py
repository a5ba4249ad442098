"""The batch pass behind cheap rank reciprocity: each user's ``kth_sim``, stored in their payload.

``kth_sim`` of user B is the cosine similarity between B's taste (B's mean vector, or the ``taste`` of
``engine.likes`` when B has a like history: what B's own list is ranked by) and B's K-th nearest
*compatible* user (``K = recommend.reciprocity_k``; compatibility as in ``engine.compatibility``).
"Is A within B's top-K?" then becomes ``cos(t_B, v_A) >= kth_sim_B``: one comparison at query time instead
of a reverse ANN query per candidate (the same idea as CSLS's per-point neighbourhood radius against hubness).
A user with fewer than K compatible users gets ``kth_sim = -1`` (everyone compatible is in their top-K).

Next to ``kth_sim`` each user keeps ``kth_top``: their K best similarities, best first (all of them when
they have fewer than K compatible users). That list is what makes an *incremental* refresh exact: a new
user enters B's top-K exactly when ``cos(t_B, v_new)`` beats the last entry, and the new ``kth_sim`` is then
read off the merged list, without scoring B against their whole pool again.

Two passes:

* :func:`refresh` — the full batch pass (``matcher refresh``): one ``scroll`` of the users collection with
  vectors, then exact brute force in numpy (:func:`compatible_topk`): users are grouped by (gender,
  seeking, age, age window), and each group is scored with one matrix product against exactly the users
  compatible with it, so the work is about ``n × (compatible users per user) × dim`` multiply-adds —
  quadratic in n when pools grow with the population (31 s at 100,000 users; docs/scaling.md).
* :func:`refresh_changed` — what ingestion and ``delete-user`` run: given who arrived (new or changed
  users), who departed (their vector and profile *before* the change: :func:`departures`) and whose taste
  changed, it recomputes exactly only the users whose top-K the change can move, and updates the others'
  lists by merging. Its work is ``changes × pool × dim`` plus one scroll; the result equals a full pass
  (tests/engine/test_refresh_incremental.py). Users whose stored statistics are missing or were made with
  another K are recomputed from scratch, so the first run after an upgrade is a full pass.

Only the points whose statistics changed are written, and only those payload keys (``Store.set_payload``:
on Edge the points keep their HNSW index, so no ``optimize()`` is needed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from engine.errors import InvalidInput
from engine.likes import taste_payload
from engine.schema import (
    KTH_K,
    KTH_SIM,
    KTH_TOP,
    LIKED_IDS,
    STAT_FIELDS,
    TASTE,
    USERS,
    Profile,
    usable_vector,
    user_point_id,
)
from engine.settings import Settings
from engine.store.base import Point, ScoredPoint, Store

log = logging.getLogger(__name__)

# The payload keys this module writes (engine.schema documents them); older names, kept for callers.
KTH_FIELD, KTH_K_FIELD, TOP_FIELD = KTH_SIM, KTH_K, KTH_TOP
LIKED_FIELD, TASTE_FIELD = LIKED_IDS, TASTE
__all__ = ["KTH_FIELD", "KTH_K_FIELD", "NO_KTH", "STAT_FIELDS", "TOP_FIELD"]
NO_KTH = -1.0
_BLOCK_ENTRIES = 1 << 24  # similarities per block in compatible_topk (64 MB of float32)
# A departed user counts as having been in B's top-K when their similarity is this close to B's last entry
# (float32 products computed in another shape differ in the last bits); a false alarm only costs a recompute.
_DEPARTED_TOL = 1e-5


@dataclass(frozen=True)
class RefreshReport:
    users: int  # users points with a vector that got a kth_sim
    rewritten: int  # of those, the points whose statistics changed (only these are written)
    skipped: int  # users points without a usable vector or profile
    seconds: float
    recomputed: int = 0  # users scored against their whole compatible pool (all of them in a full pass)
    merged: int = 0  # users whose top-K list was updated by merging in arrivals (incremental pass only)


@dataclass(frozen=True)
class Departed:
    """A user as they were before being deleted or changed: the mean vector ((d,) float32, unit) and the
    profile that other users' stored statistics were computed with."""

    user_id: str
    vector: np.ndarray
    profile: Profile


def kth_from_results(results: Sequence[ScoredPoint], k: int) -> float:
    """The K-th best score of one filtered top-K result list, or ``NO_KTH`` when it has fewer than K."""
    return float(results[k - 1].score) if len(results) >= k else NO_KTH


def departures(store: Store, user_ids: Iterable[str]) -> list[Departed]:
    """The stored state of these users (those with a usable vector and profile), read *before* a caller
    deletes or rewrites them, for :func:`refresh_changed`. Unknown ids are left out."""
    pids = sorted({user_point_id(str(u)) for u in user_ids})
    out: list[Departed] = []
    for start in range(0, len(pids), 1024):
        for p in store.retrieve(USERS, pids[start : start + 1024], with_vectors=True):
            v = usable_vector(p)
            if v is None:
                continue
            try:
                prof = Profile.from_payload(p.payload, where=f"users point {p.id}")
            except InvalidInput:
                continue  # it had no statistics of its own, and was in nobody's pool
            out.append(Departed(prof.user_id, v, prof))
    return out


@dataclass
class _Population:
    """Every users point with a usable vector and profile: payloads, an (n, d) matrix, profiles."""

    points: list[Point]  # payloads only (vectors moved into ``matrix``)
    matrix: np.ndarray
    profiles: list[Profile]
    skipped: int

    @property
    def index(self) -> dict[str, int]:
        return {p.id: i for i, p in enumerate(self.points)}


def _load(store: Store) -> _Population:
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
    return _Population(points, matrix, profiles, skipped)


def _taste(pop: _Population, index: dict[str, int], i: int, blend: float) -> list[float] | None:
    """User ``i``'s taste from their stored like history and the current vectors (None without likes)."""
    liked_pids = (user_point_id(str(u)) for u in (pop.points[i].payload or {}).get(LIKED_FIELD) or [])
    liked = [index[pid] for pid in liked_pids if pid in index]
    return taste_payload(pop.matrix[i], pop.matrix[liked] if liked else None, blend)


def refresh(store: Store, settings: Settings, *, chunk: int = 2048) -> RefreshReport:
    """Recompute ``kth_sim``, ``kth_top`` (and ``taste`` where there are likes) for every user, and write
    them back: the full batch pass (``matcher refresh``).

    ``chunk``: most users scored in one similarity block (memory: ``chunk`` x compatible users x 4 bytes).

    Raises ``StoreUnavailable`` from the store; users without a vector or a readable profile are skipped
    (logged), not fatal, so one bad record cannot block the pass.
    """
    if chunk < 1:
        raise InvalidInput(f"chunk: must be positive, got {chunk}")
    t0 = time.perf_counter()
    k = settings.recommend.reciprocity_k
    pop = _load(store)
    n = len(pop.points)
    # Tastes first: each user's list is ranked by their taste, so kth_sim is measured with it.
    index = pop.index
    blend = settings.recommend.taste_blend
    tastes = [_taste(pop, index, i, blend) for i in range(n)]
    top = compatible_topk(
        pop.matrix,
        pop.profiles,
        k,
        queries={i: np.asarray(t, dtype=np.float32) for i, t in enumerate(tastes) if t is not None},
        block=chunk,
        progress=settings.progress,
    )
    changes = {}
    for i in range(n):
        change = _change(pop.points[i].payload or {}, top[i], k, tastes[i], retasted=True)
        if change is not None:
            changes[pop.points[i].id] = change
    _write(store, changes, settings.ingest.write_batch_size)
    seconds = time.perf_counter() - t0
    log.info(
        "reciprocity refresh: %d users (K=%d), %d rewritten, in %.1f s; %d skipped",
        n,
        k,
        len(changes),
        seconds,
        pop.skipped,
    )
    return RefreshReport(users=n, rewritten=len(changes), skipped=pop.skipped, seconds=seconds, recomputed=n, merged=0)


def refresh_changed(
    store: Store,
    settings: Settings,
    *,
    arrived: Iterable[str] = (),
    departed: Sequence[Departed] = (),
    retasted: Iterable[str] = (),
    chunk: int = 2048,
) -> RefreshReport:
    """Bring every user's statistics up to date after a change, touching only whom the change can move.

    ``arrived``: user ids stored or rewritten since the statistics were last computed (their vector or
    profile is read from the store as it is now). ``departed``: the users deleted or rewritten, as they were
    before (:func:`departures`; a rewritten user is in both). ``retasted``: users whose like history changed.

    Exactly recomputed: arrivals, retasted users and users who liked an arrival (their taste changes), every
    user whose stored statistics are missing or were made with another K, and every user a departed user
    was in the top-K of. Everyone else compatible with an arrival gets the arrival merged into their stored
    top-K list when it beats the last entry. The result equals :func:`refresh`'s. Raises
    ``StoreUnavailable`` from the store.
    """
    if chunk < 1:
        raise InvalidInput(f"chunk: must be positive, got {chunk}")
    t0 = time.perf_counter()
    k = settings.recommend.reciprocity_k
    blend = settings.recommend.taste_blend
    pop = _load(store)
    n = len(pop.points)
    index = pop.index
    arrived_pids = {user_point_id(str(u)) for u in arrived}
    arrivals = sorted(index[pid] for pid in arrived_pids if pid in index)

    # Stored lists: (n, k) best first, -inf padded; a user whose list cannot be trusted is recomputed.
    stored = np.full((n, k), -np.inf, dtype=np.float32)
    recompute = np.zeros(n, dtype=bool)
    for i, p in enumerate(pop.points):
        lst = _stored_top(p.payload or {}, k)
        if lst is None:
            recompute[i] = True
        else:
            stored[i, : len(lst)] = lst
    # A user without valid statistics may be missing from others' lists too (e.g. a run stopped between
    # writing users and refreshing): handle them as arrivals.
    arrivals = sorted(set(arrivals) | set(np.flatnonzero(recompute).tolist()))
    recompute[arrivals] = True
    # Tastes: recomputed for arrivals, the retasted, and whoever liked an arrival or a departed user.
    moved_users = {pop.profiles[i].user_id for i in arrivals} | {d.user_id for d in departed}
    retaste = set(arrivals) | {index[user_point_id(str(u))] for u in retasted if user_point_id(str(u)) in index}
    for i, p in enumerate(pop.points):
        liked = (p.payload or {}).get(LIKED_FIELD) or []
        if liked and not moved_users.isdisjoint(str(u) for u in liked):
            retaste.add(i)
    recompute[sorted(retaste)] = True
    tastes: dict[int, list[float] | None] = {i: _taste(pop, index, i, blend) for i in retaste}
    queries = pop.matrix.copy()  # what each user's list is ranked by
    for i, p in enumerate(pop.points):
        t = tastes[i] if i in tastes else (p.payload or {}).get(TASTE_FIELD)
        if t is not None:
            queries[i] = np.asarray(t, dtype=np.float32)

    g = _Groups(pop.profiles)
    count = (stored > -np.inf).sum(axis=1)
    last = np.where(count >= k, stored[:, k - 1], -np.inf)  # what a newcomer must beat
    # Departures: whoever had the departed user in their top-K loses an entry they cannot refill alone.
    for members, pool in g.pools_of([d.profile for d in departed]):
        pool = pool[~recompute[pool]]
        if len(pool) == 0:
            continue
        old = np.stack([departed[j].vector for j in members]).astype(np.float32)
        sims = queries[pool] @ old.T  # (pool, members)
        hit = np.any(sims >= last[pool, None] - _DEPARTED_TOL, axis=1) | (count[pool] < k)
        recompute[pool[hit]] = True
    # Arrivals: merged into the lists they beat.
    new_vals: dict[int, list[np.ndarray]] = {}
    for members, pool in g.pools_of([pop.profiles[i] for i in arrivals]):
        pool = pool[~recompute[pool]]
        if len(pool) == 0:
            continue
        sims = queries[pool] @ pop.matrix[[arrivals[j] for j in members]].T
        r, c = np.nonzero(sims > last[pool, None])
        for row in np.unique(r):
            new_vals.setdefault(int(pool[row]), []).append(sims[row, c[r == row]])
    merged_top = {}
    for i, vals in new_vals.items():
        if recompute[i]:
            continue
        both = np.concatenate([stored[i, : count[i]], *vals])
        both = -np.sort(-both)[:k]
        row = np.full(k, -np.inf, dtype=np.float32)
        row[: len(both)] = both
        merged_top[i] = row
    rows = np.flatnonzero(recompute)
    exact = compatible_topk(
        pop.matrix,
        pop.profiles,
        k,
        rows=rows,
        queries={i: queries[i] for i in rows.tolist() if _has_taste(i, tastes, pop)},
        block=chunk,
        progress=settings.progress,
    )
    changes = {}
    for j, i in enumerate(rows.tolist()):
        change = _change(pop.points[i].payload or {}, exact[j], k, tastes.get(i), retasted=i in tastes)
        if change is not None:
            changes[pop.points[i].id] = change
    for i, row in merged_top.items():
        change = _change(pop.points[i].payload or {}, row, k, None, retasted=False)
        if change is not None:
            changes[pop.points[i].id] = change
    _write(store, changes, settings.ingest.write_batch_size)
    seconds = time.perf_counter() - t0
    log.info(
        "reciprocity refresh after %d arrivals, %d departures: %d of %d users recomputed, %d merged, "
        "%d rewritten, in %.1f s",
        len(arrivals),
        len(departed),
        len(rows),
        n,
        len(merged_top),
        len(changes),
        seconds,
    )
    return RefreshReport(
        users=n,
        rewritten=len(changes),
        skipped=pop.skipped,
        seconds=seconds,
        recomputed=len(rows),
        merged=len(merged_top),
    )


def _has_taste(i: int, tastes: dict[int, list[float] | None], pop: _Population) -> bool:
    if i in tastes:
        return tastes[i] is not None
    return (pop.points[i].payload or {}).get(TASTE_FIELD) is not None


def _stored_top(payload: dict[str, Any], k: int) -> list[float] | None:
    """The stored top-K list when it is usable for K (consistent with ``kth_sim``), else None."""
    lst, kth = payload.get(TOP_FIELD), payload.get(KTH_FIELD)
    if payload.get(KTH_K_FIELD) != k or not isinstance(lst, list) or not isinstance(kth, int | float):
        return None
    if len(lst) > k or not all(isinstance(x, int | float) for x in lst):
        return None
    expected = float(lst[k - 1]) if len(lst) == k else NO_KTH
    if abs(expected - float(kth)) > 1e-6:
        return None
    return [float(x) for x in lst]


def _change(
    old: dict[str, Any], top: np.ndarray, k: int, taste: list[float] | None, *, retasted: bool
) -> dict[str, Any] | None:
    """The payload keys to write for one user (None when nothing changed beyond float noise).

    ``top``: (k,) best first, -inf padded. ``taste`` is written only when ``retasted``."""
    vals = [float(x) for x in top if np.isfinite(x)]
    kth = vals[k - 1] if len(vals) >= k else NO_KTH
    change: dict[str, Any] = {}
    old_kth, old_top = old.get(KTH_FIELD), old.get(TOP_FIELD)
    if not isinstance(old_kth, int | float) or abs(float(old_kth) - kth) > 1e-6 or old.get(KTH_K_FIELD) != k:
        change.update({KTH_FIELD: kth, KTH_K_FIELD: k})
    if (
        not isinstance(old_top, list)
        or len(old_top) != len(vals)
        or not np.allclose(np.asarray(old_top, dtype=np.float64), vals, atol=1e-6)
    ):
        change[TOP_FIELD] = vals
    if retasted and _taste_changed(old.get(TASTE_FIELD), taste):
        change[TASTE_FIELD] = taste  # None deletes the key
    if not change:
        return None
    # The three statistics are written together, so a stored list always matches its kth_sim and K.
    change.update({KTH_FIELD: kth, KTH_K_FIELD: k, TOP_FIELD: vals})
    return change


def _taste_changed(old: Any, taste: list[float] | None) -> bool:
    if (old is None) != (taste is None):
        return True
    if taste is None:
        return False
    before = np.asarray(old, dtype=np.float64)
    return before.shape != (len(taste),) or not np.allclose(before, taste, atol=1e-6)


def _write(store: Store, changes: dict[str, dict[str, Any]], batch: int) -> None:
    ids = list(changes)
    for start in range(0, len(ids), batch):
        store.set_payload(USERS, {pid: changes[pid] for pid in ids[start : start + batch]})


def _gender_codes(profiles: Sequence[Profile]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Each user's gender as a bit (1 << index) and what they seek as a bit mask, over all genders seen."""
    genders = sorted({p.gender for p in profiles} | {s for p in profiles for s in p.seeking})
    if len(genders) > 62:
        raise InvalidInput(f"profiles: {len(genders)} distinct genders; at most 62 are supported")
    bit = {g: 1 << i for i, g in enumerate(genders)}
    gender = np.array([bit[p.gender] for p in profiles], dtype=np.int64)
    seeks = np.array([sum(bit[s] for s in set(p.seeking)) for p in profiles], dtype=np.int64)
    return gender, seeks, bit


class _Groups:
    """The population's compatibility attributes as arrays, and each group's compatible pool.

    Users sharing (gender, seeking, age, age window) share every constraint, so a group has one pool:
    candidates sorted by age make the group's window one slice, then both sides' other tests are masks.
    """

    def __init__(self, profiles: Sequence[Profile]) -> None:
        self.gender, self.seeks, self.bit = _gender_codes(profiles)
        self.age = np.array([p.age for p in profiles], dtype=np.int64)
        self.lo = np.array([p.age_min for p in profiles], dtype=np.int64)
        self.hi = np.array([p.age_max for p in profiles], dtype=np.int64)
        self.by_age = np.argsort(self.age, kind="stable")
        self.age_sorted = self.age[self.by_age]

    def pool(self, g: int, want: int, a: int, lo: int, hi: int) -> np.ndarray:
        """Rows compatible with a user of gender bit ``g`` seeking mask ``want``, age ``a`` and window
        [lo, hi] (the user themselves included when they are in the population and self-compatible)."""
        left, right = np.searchsorted(self.age_sorted, [lo, hi + 1])
        p = self.by_age[left:right]
        return p[((self.gender[p] & want) != 0) & ((self.seeks[p] & g) != 0) & (self.lo[p] <= a) & (self.hi[p] >= a)]

    def pools_of(self, profiles: Sequence[Profile]) -> Iterator[tuple[list[int], np.ndarray]]:
        """For outside profiles (departed or arriving users): (indexes into ``profiles`` sharing a group,
        that group's pool in this population)."""
        groups: dict[tuple[int, int, int, int, int], list[int]] = {}
        for j, p in enumerate(profiles):
            g = self.bit.get(p.gender, 0)
            want = sum(self.bit.get(s, 0) for s in set(p.seeking))
            groups.setdefault((g, want, p.age, p.age_min, p.age_max), []).append(j)
        for key, members in groups.items():
            yield members, self.pool(*key)


def compatible_topk(
    vectors: np.ndarray,
    profiles: Sequence[Profile],
    k: int,
    *,
    rows: np.ndarray | Sequence[int] | None = None,
    queries: dict[int, np.ndarray] | None = None,
    block: int = 2048,
    progress: bool = False,
) -> np.ndarray:
    """The K best similarities of each user over their compatible users, by exact brute force.

    ``vectors`` (n, d) float32 unit rows (the users' mean vectors, what candidates are judged by);
    ``profiles`` aligned with them; ``rows``: the users to score (default: all); ``queries``: row -> (d,) unit
    vector ranking that user's list instead of their own vector (their taste, ``engine.likes``). Returns
    (len(rows), k) float32, best first, ``-inf`` where a user has fewer than K compatible users (never
    themselves). Each group of rows sharing (gender, seeking, age, age window) is one matrix product against
    exactly its compatible users; ``block`` caps the rows per product.
    """
    n = len(profiles)
    if vectors.shape[0] != n:
        raise InvalidInput(f"vectors: {vectors.shape[0]} rows for {n} profiles")
    if k < 1 or block < 1:
        raise InvalidInput(f"k and block must be positive, got k={k}, block={block}")
    sel = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.full((len(sel), k), -np.inf, dtype=np.float32)
    if len(sel) == 0:
        return out
    queries = queries or {}
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    grp = _Groups(profiles)
    gender, seeks, age, lo, hi = grp.gender[sel], grp.seeks[sel], grp.age[sel], grp.lo[sel], grp.hi[sel]
    # Groups of selected rows with the same (gender, seeking, age, age window), in one sort.
    order = np.lexsort((hi, lo, age, seeks, gender))
    key = np.stack([gender[order], seeks[order], age[order], lo[order], hi[order]], axis=1)
    starts = np.flatnonzero(np.r_[True, np.any(key[1:] != key[:-1], axis=1)])
    bounds = np.r_[starts, len(sel)]
    slot = np.full(n, -1, dtype=np.int64)
    bar = tqdm(total=len(sel), desc="reciprocity", unit="user", disable=not progress)
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        at = order[s:e]  # positions in ``sel`` / ``out``
        members = sel[at]
        g, want, a, lo_g, hi_g = (int(x) for x in key[s])
        pool = grp.pool(g, want, a, lo_g, hi_g)
        # Members share every attribute: either all of them are in the pool (self-compatible) or none.
        self_in = (g & want) != 0 and lo_g <= a <= hi_g
        if len(pool) - int(self_in) <= 0:
            bar.update(len(at))
            continue  # nobody compatible
        pool_vecs = vectors[pool]
        if self_in:
            slot[pool] = np.arange(len(pool))  # where each member sits in the pool
        step = max(1, min(block, _BLOCK_ENTRIES // len(pool)))
        width = min(k, len(pool))
        for b in range(0, len(at), step):
            pos, r = at[b : b + step], members[b : b + step]
            q = vectors[r]
            if queries:
                for j, row in enumerate(r):
                    t = queries.get(int(row))
                    if t is not None:
                        q[j] = t
            sims = q @ pool_vecs.T  # (rows, pool) float32
            if self_in:
                sims[np.arange(len(r)), slot[r]] = -np.inf  # never oneself
            if width < len(pool):
                sims = np.partition(sims, len(pool) - width, axis=1)[:, len(pool) - width :]
            out[pos, :width] = -np.sort(-sims, axis=1)
        if self_in:
            slot[pool] = -1
        bar.update(len(at))
    bar.close()
    return out


def compatible_kth(
    vectors: np.ndarray,
    profiles: Sequence[Profile],
    k: int,
    *,
    queries: dict[int, np.ndarray] | None = None,
    block: int = 2048,
    progress: bool = False,
) -> np.ndarray:
    """Every user's ``kth_sim`` by exact brute force (:func:`compatible_topk`'s K-th column): (n,) float64,
    ``NO_KTH`` for a user with fewer than K compatible users. Arguments as there."""
    top = compatible_topk(vectors, profiles, k, queries=queries, block=block, progress=progress)
    last = top[:, k - 1].astype(np.float64)
    return np.where(np.isfinite(last), last, NO_KTH)


def exact_kth(vectors: np.ndarray, profiles: Sequence[Profile], k: int, *, block: int | None = None) -> np.ndarray:
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
