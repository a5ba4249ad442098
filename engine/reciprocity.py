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

import bisect
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from engine.compatibility import compatible_filter
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
from engine.store.base import Point, Query, ScoredPoint, Store

log = logging.getLogger(__name__)

# The payload keys this module writes (engine.schema documents them); older names, kept for callers.
KTH_FIELD, KTH_K_FIELD, TOP_FIELD = KTH_SIM, KTH_K, KTH_TOP
LIKED_FIELD, TASTE_FIELD = LIKED_IDS, TASTE
__all__ = ["KTH_FIELD", "KTH_K_FIELD", "NO_KTH", "STAT_FIELDS", "TOP_FIELD"]
TOP_KEEP = 8  # entries kept in kth_top: a window absorbs at least 7 arrivals above it before a recompute
NO_KTH = -1.0
_BLOCK_ENTRIES = 1 << 24  # similarities per block in compatible_topk (64 MB of float32)
_SMALL_GROUP = 8  # groups of at most this many rows are scored in age blocks (_topk_in_age_blocks)
_AGE_BLOCK = 64  # rows per product there
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
        if p.vector is None or np.size(p.vector) == 0:
            skipped += 1
            continue
        try:
            prof = Profile.from_payload(p.payload, where=f"users point {p.id}")
        except InvalidInput as exc:
            log.warning("reciprocity refresh skips a user: %s", exc)
            skipped += 1
            continue
        points.append(p)
        vectors.append(p.vector)
        profiles.append(prof)
    # One (n, d) matrix; the points keep only their payloads (at 100,000 users the per-point copies would
    # double the pass's memory). Vectors are checked as a whole (usable_vector per point costs ~25 us each).
    matrix = np.stack(vectors).astype(np.float32, copy=False) if vectors else np.zeros((0, 1), np.float32)
    del vectors
    ok = np.isfinite(matrix).all(axis=1) & matrix.any(axis=1)  # no vector, or an all-zero one: no valid photo
    if not ok.all():
        skipped += int((~ok).sum())
        keep_rows = np.flatnonzero(ok)
        matrix = matrix[keep_rows]
        points = [points[i] for i in keep_rows]
        profiles = [profiles[i] for i in keep_rows]
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
        change = _change(pop.points[i].payload or {}, *_stats(top[i], k), k, tastes[i], retasted=True)
        if change is not None:
            changes[pop.points[i].id] = change
    _write(store, changes, settings.ingest.write_batch_size)
    seconds = time.perf_counter() - t0
    log.info(
        "reciprocity refresh: %d users (K=%d), %d rewritten, in %.1f s; %d skipped",
        n, k, len(changes), seconds, pop.skipped,
    )  # fmt: skip
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
    user whose stored statistics are missing or were made with another K, every user a departed user was
    in the top-K of, and users whose stored window ran out. Everyone else compatible with an arrival gets it
    merged into their stored window when it beats their K-th. The result equals :func:`refresh`'s.
    Raises ``StoreUnavailable`` from the store.
    """
    if chunk < 1:
        raise InvalidInput(f"chunk: must be positive, got {chunk}")
    t0 = time.perf_counter()
    k = settings.recommend.reciprocity_k
    blend = settings.recommend.taste_blend
    pop = _load(store)
    n = len(pop.points)
    index = pop.index

    # Stored statistics; a user whose statistics cannot be trusted is recomputed.
    stored: list[tuple[float, list[float]] | None] = [_stored(p.payload or {}, k) for p in pop.points]
    recompute = np.array([s is None for s in stored], dtype=bool)
    last = np.array([s[0] if s is not None else np.inf for s in stored], dtype=np.float64)
    complete = last == NO_KTH  # fewer than K compatible users: the list holds all of them
    last[complete] = -np.inf  # anyone compatible enters such a list
    # A user without valid statistics may be missing from others' lists too (e.g. a run stopped between
    # writing users and refreshing): handle them as arrivals.
    arrived_pids = {user_point_id(str(u)) for u in arrived}
    arrivals = sorted({index[pid] for pid in arrived_pids if pid in index} | set(np.flatnonzero(recompute).tolist()))
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

    bit = _gender_bits([*pop.profiles, *(d.profile for d in departed)])
    grp = _Groups(pop.profiles, bit)
    # Departures: whoever had the departed user in their top-K loses an entry they cannot refill alone.
    if departed:
        old_vecs = np.stack([d.vector for d in departed]).astype(np.float32)
        others = _Groups([d.profile for d in departed], bit)
        for members, pool in _against(grp, np.flatnonzero(~recompute), others):
            sims = queries[members] @ old_vecs[pool].T
            hit = np.any(sims >= last[members, None] - _DEPARTED_TOL, axis=1)
            recompute[members[hit]] = True
    # Arrivals: merged into the windows they beat.
    new_vals: dict[int, list[np.ndarray]] = {}
    if arrivals:
        arr = np.asarray(arrivals, dtype=np.int64)
        arr_vecs = pop.matrix[arr]
        others = _Groups([pop.profiles[i] for i in arrivals], bit)
        for members, pool in _against(grp, np.flatnonzero(~recompute), others):
            sims = queries[members] @ arr_vecs[pool].T
            beat = sims > last[members, None]
            for r in np.flatnonzero(beat.any(axis=1)):
                new_vals.setdefault(int(members[r]), []).append(sims[r, beat[r]])
    merged: dict[int, tuple[float, list[float]]] = {}
    for i, vals in new_vals.items():
        s = stored[i]
        if s is None:  # cannot happen: only users with trusted statistics receive arrivals
            continue
        out = _merge(s[0], s[1], (-np.sort(-np.concatenate(vals))).tolist(), k)
        if out is None:
            recompute[i] = True  # the window ran out: more arrivals above it than it could absorb
        else:
            merged[i] = out
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
        change = _change(pop.points[i].payload or {}, *_stats(exact[j], k), k, tastes.get(i), retasted=i in tastes)
        if change is not None:
            changes[pop.points[i].id] = change
    for i, (kth, window) in merged.items():
        if recompute[i]:
            continue
        change = _change(pop.points[i].payload or {}, kth, window, k, None, retasted=False)
        if change is not None:
            changes[pop.points[i].id] = change
    _write(store, changes, settings.ingest.write_batch_size)
    seconds = time.perf_counter() - t0
    n_merged = sum(1 for i in merged if not recompute[i])
    log.info(
        "reciprocity refresh after %d arrivals, %d departures: %d of %d users recomputed, %d merged, "
        "%d rewritten, in %.1f s",
        len(arrivals), len(departed), len(rows), n, n_merged, len(changes), seconds,
    )  # fmt: skip
    return RefreshReport(
        users=n, rewritten=len(changes), skipped=pop.skipped, seconds=seconds, recomputed=len(rows), merged=n_merged
    )


def refresh_departed(
    store: Store, settings: Settings, departed: Sequence[Departed], *, retasted: Iterable[str] = ()
) -> int:
    """After a few users were deleted (``delete-user``): recompute exactly the users who had one of them in
    their top-K, and the ``retasted`` users, without reading the whole population.

    Reads only each departed user's compatible pool (a filtered scroll: the only users whose top-K can have
    held them), and recomputes each hit with one exact filtered top-K query (:func:`refresh_user`). Same
    result as :func:`refresh_changed` for deletions; for many changes that one is cheaper. Returns how many
    users were rewritten. Raises ``StoreUnavailable`` from the store."""
    hits: set[str] = {user_point_id(str(u)) for u in retasted}
    for d in departed:
        for p in store.scroll(USERS, compatible_filter(d.profile), with_vectors=True):
            own = usable_vector(p)
            stored = _stored(p.payload or {}, settings.recommend.reciprocity_k)
            if own is None or stored is None:
                continue  # no statistics to keep right (the next refresh computes them)
            taste = (p.payload or {}).get(TASTE_FIELD)
            q = np.asarray(taste, dtype=np.float32) if taste is not None else own
            if stored[0] == NO_KTH or float(q @ d.vector) >= stored[0] - _DEPARTED_TOL:
                hits.add(p.id)
    points = {p.id: p for p in store.retrieve(USERS, sorted(hits), with_vectors=True)}
    return sum(_refresh_point(store, settings, points[pid]) for pid in sorted(points))


def refresh_user(store: Store, settings: Settings, user_id: str) -> bool:
    """Recompute one user's own statistics after their taste changed (a new like history), with one exact
    filtered top-K query of the store: nobody else's statistics depend on a user's taste (candidates are
    judged by their mean vectors). Returns whether anything was written; an unknown user, or one without a
    usable vector or profile, is left alone (False). Raises ``StoreUnavailable`` from the store."""
    points = store.retrieve(USERS, [user_point_id(str(user_id))], with_vectors=True)
    return bool(points) and _refresh_point(store, settings, points[0])


def _refresh_point(store: Store, settings: Settings, p: Point) -> bool:
    own = usable_vector(p)
    if own is None:
        return False
    try:
        profile = Profile.from_payload(p.payload, where=f"users point {p.id}")
    except InvalidInput:
        return False
    k = settings.recommend.reciprocity_k
    taste = (p.payload or {}).get(TASTE_FIELD)
    q = np.asarray(taste, dtype=np.float32) if taste is not None else own
    query = Query(vector=q, limit=k, filter=compatible_filter(profile), with_payload=False, exact=True)
    found = store.query(USERS, query)
    top = np.full(k, -np.inf, dtype=np.float32)
    top[: len(found)] = [r.score for r in found]
    change = _change(p.payload or {}, *_stats(top, k), k, None, retasted=False)
    if change is not None:
        store.set_payload(USERS, {p.id: change})
    return change is not None


def _has_taste(i: int, tastes: dict[int, list[float] | None], pop: _Population) -> bool:
    if i in tastes:
        return tastes[i] is not None
    return (pop.points[i].payload or {}).get(TASTE_FIELD) is not None


def _stats(top: np.ndarray, k: int) -> tuple[float, list[float]]:
    """``(kth_sim, kth_top)`` from one row of :func:`compatible_topk` ((k,) best first, -inf padded)."""
    vals = top[np.isfinite(top)]
    if len(vals) >= k:
        return float(vals[k - 1]), [float(x) for x in vals[max(0, k - TOP_KEEP) : k]]
    return NO_KTH, [float(x) for x in vals]


def _stored(payload: dict[str, Any], k: int) -> tuple[float, list[float]] | None:
    """The stored ``(kth_sim, kth_top)`` when usable for K (consistent with each other), else None."""
    lst, kth = payload.get(TOP_FIELD), payload.get(KTH_FIELD)
    if payload.get(KTH_K_FIELD) != k or not isinstance(lst, list) or not isinstance(kth, int | float):
        return None
    if kth == NO_KTH:
        return (NO_KTH, lst) if len(lst) < k else None
    if not 1 <= len(lst) <= min(k, TOP_KEEP) or abs(float(lst[-1]) - float(kth)) > 1e-6:
        return None
    return float(kth), lst


def _merge(kth: float, window: list[float], vals: list[float], k: int) -> tuple[float, list[float]] | None:
    """A stored ``(kth_sim, kth_top)`` with new similarities ``vals`` (best first) merged in, or None when
    the window cannot tell the new K-th (more newcomers above it than it holds entries).

    ``window`` holds ranks ``K - len + 1 .. K`` of the top-K, or all of a user's similarities when they
    have fewer than K compatible users (``kth == NO_KTH``)."""
    if kth == NO_KTH:
        full = sorted([*window, *vals], reverse=True)
        if len(full) >= k:
            return full[k - 1], full[max(0, k - TOP_KEEP) : k]
        return NO_KTH, full
    w = list(window)
    for s in vals:
        if s <= w[-1]:
            continue
        if len(w) == k or s < w[0]:
            bisect.insort(w, s, key=lambda x: -x)  # inside the window: it shifts down by one
        # else above the window: the window's first rank is now unknown, so it loses an entry
        w.pop()
        if not w:
            return None
    return w[-1], w


def _change(
    old: dict[str, Any], kth: float, window: list[float], k: int, taste: list[float] | None, *, retasted: bool
) -> dict[str, Any] | None:
    """The payload keys to write for one user (None when nothing changed beyond float noise).

    ``taste`` is written only when ``retasted``."""
    change: dict[str, Any] = {}
    old_kth, old_top = old.get(KTH_FIELD), old.get(TOP_FIELD)
    if (
        not isinstance(old_kth, int | float)
        or abs(float(old_kth) - kth) > 1e-6
        or old.get(KTH_K_FIELD) != k
        or not isinstance(old_top, list)
        or len(old_top) != len(window)
        or not np.allclose(np.asarray(old_top, dtype=np.float64), window, atol=1e-6)
    ):
        # The three statistics are written together, so a stored window always matches its kth_sim and K.
        change.update({KTH_FIELD: kth, KTH_K_FIELD: k, TOP_FIELD: window})
    if retasted and _taste_changed(old.get(TASTE_FIELD), taste):
        change.update({KTH_FIELD: kth, KTH_K_FIELD: k, TOP_FIELD: window, TASTE_FIELD: taste})  # None deletes
    return change or None


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


def _gender_bits(profiles: Sequence[Profile]) -> dict[str, int]:
    """A bit (1 << index) per gender seen in the profiles, as someone's gender or in what they seek."""
    genders = sorted({p.gender for p in profiles} | {s for p in profiles for s in p.seeking})
    if len(genders) > 62:
        raise InvalidInput(f"profiles: {len(genders)} distinct genders; at most 62 are supported")
    return {g: 1 << i for i, g in enumerate(genders)}


class _Groups:
    """Profiles' compatibility attributes as arrays (genders as bits of ``bit``), and the compatible pool
    of a group. Users sharing (gender, seeking, age, age window) share every constraint, so a group has one
    pool: candidates sorted by age make the group's window one slice, then both sides' other tests are masks.
    """

    def __init__(self, profiles: Sequence[Profile], bit: dict[str, int] | None = None) -> None:
        self.bit = bit if bit is not None else _gender_bits(profiles)
        self.gender = np.array([self.bit[p.gender] for p in profiles], dtype=np.int64)
        self.seeks = np.array([sum(self.bit[s] for s in set(p.seeking)) for p in profiles], dtype=np.int64)
        self.age = np.array([p.age for p in profiles], dtype=np.int64)
        self.lo = np.array([p.age_min for p in profiles], dtype=np.int64)
        self.hi = np.array([p.age_max for p in profiles], dtype=np.int64)
        self.by_age = np.argsort(self.age, kind="stable")
        self.age_sorted = self.age[self.by_age]

    def window(self, g: int, want: int, a: int, lo: int, hi: int) -> tuple[int, int, np.ndarray]:
        """The slice ``[left, right)`` of ``by_age`` inside the age window [lo, hi], and which of its rows are
        compatible with a user of gender bit ``g``, seeking mask ``want`` and age ``a`` (bool mask)."""
        left, right = (int(x) for x in np.searchsorted(self.age_sorted, [lo, hi + 1]))
        p = self.by_age[left:right]
        ok = ((self.gender[p] & want) != 0) & ((self.seeks[p] & g) != 0) & (self.lo[p] <= a) & (self.hi[p] >= a)
        return left, right, ok

    def pool(self, g: int, want: int, a: int, lo: int, hi: int) -> np.ndarray:
        """Rows compatible with such a user (the user themselves included when they are among the rows and
        self-compatible)."""
        left, right, ok = self.window(g, want, a, lo, hi)
        return self.by_age[left:right][ok]

    def groups(self, sel: np.ndarray) -> Iterator[tuple[np.ndarray, tuple[int, int, int, int, int]]]:
        """The rows ``sel`` split into groups: (positions in ``sel``, the group's key)."""
        keys = np.stack([self.gender[sel], self.seeks[sel], self.age[sel], self.lo[sel], self.hi[sel]], axis=1)
        order = np.lexsort(keys.T[::-1])
        keys = keys[order]
        starts = np.flatnonzero(np.r_[True, np.any(keys[1:] != keys[:-1], axis=1)])
        for s, e in zip(starts, np.r_[starts[1:], len(sel)], strict=True):
            g, want, a, lo, hi = (int(x) for x in keys[s])
            yield order[s:e], (g, want, a, lo, hi)


def _against(grp: _Groups, receivers: np.ndarray, others: _Groups) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each group of ``receivers`` (rows of ``grp``): (its rows, the rows of ``others`` compatible with
    it), skipping groups nobody in ``others`` is compatible with. One matrix product per pair then scores a
    whole group against the changed users."""
    if len(receivers) == 0:
        return
    for at, key in grp.groups(receivers):
        pool = others.pool(*key)
        if len(pool):
            yield receivers[at], pool


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
    slot = np.full(n, -1, dtype=np.int64)
    small: list[np.ndarray] = []
    bar = tqdm(total=len(sel), desc="reciprocity", unit="user", disable=not progress)
    for at, (g, want, a, lo_g, hi_g) in grp.groups(sel):  # at: positions in ``sel`` / ``out``
        members = sel[at]
        # Members share every attribute: either all of them are in the pool (self-compatible) or none.
        self_in = (g & want) != 0 and lo_g <= a <= hi_g
        if len(at) <= _SMALL_GROUP:
            small.append(at)  # scored below, with other few-row groups of similar age
            continue
        pool = grp.pool(g, want, a, lo_g, hi_g)
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
    if small:
        _topk_in_age_blocks(vectors, grp, sel, np.concatenate(small), queries, k, out)
        bar.update(sum(len(at) for at in small))
    bar.close()
    return out


def _topk_in_age_blocks(
    vectors: np.ndarray,
    grp: _Groups,
    sel: np.ndarray,
    at: np.ndarray,
    queries: dict[int, np.ndarray],
    k: int,
    out: np.ndarray,
) -> None:
    """``out[at]`` for rows ``sel[at]`` from groups too small to be worth copying their pool (an incremental
    pass: a few rows per group). Rows sorted by age go in blocks of ``_AGE_BLOCK``: each block is one matrix
    product against the contiguous slice of age-sorted vectors its windows span, with the compatibility
    tests as a mask, so the vectors are read once per block instead of once per group."""
    by_age_vecs = vectors[grp.by_age]
    rank = np.empty(len(grp.by_age), dtype=np.int64)
    rank[grp.by_age] = np.arange(len(grp.by_age))
    at = at[np.argsort(grp.age[sel[at]], kind="stable")]
    for b in range(0, len(at), _AGE_BLOCK):
        pos = at[b : b + _AGE_BLOCK]
        r = sel[pos]
        left, right = (int(x) for x in np.searchsorted(grp.age_sorted, [grp.lo[r].min(), grp.hi[r].max() + 1]))
        if right <= left:
            continue
        c = grp.by_age[left:right]
        ok = (
            ((grp.gender[c][None, :] & grp.seeks[r][:, None]) != 0)
            & ((grp.seeks[c][None, :] & grp.gender[r][:, None]) != 0)
            & (grp.age[c][None, :] >= grp.lo[r][:, None])
            & (grp.age[c][None, :] <= grp.hi[r][:, None])
            & (grp.lo[c][None, :] <= grp.age[r][:, None])
            & (grp.hi[c][None, :] >= grp.age[r][:, None])
        )
        own = rank[r] - left
        inside = (own >= 0) & (own < right - left)
        ok[np.flatnonzero(inside), own[inside]] = False  # never oneself
        q = np.stack([queries.get(int(i), vectors[i]) for i in r]) if queries else vectors[r]
        sims = q @ by_age_vecs[left:right].T
        sims[~ok] = -np.inf
        width = min(k, right - left)
        if width < right - left:
            sims = np.partition(sims, right - left - width, axis=1)[:, right - left - width :]
        out[pos, :width] = -np.sort(-sims, axis=1)


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
