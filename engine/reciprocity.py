"""The batch passes behind cheap rank reciprocity: each user's ``kth_sim``, stored in their payload.

``kth_sim`` of user B is the cosine similarity between B's taste (B's mean vector, or the ``taste`` of
``engine.likes`` when B has a like history: what B's own list is ranked by) and B's K-th nearest
*compatible* user (``K = recommend.reciprocity_k``; compatibility as in ``engine.compatibility``).
"Is A within B's top-K?" then becomes ``cos(t_B, v_A) >= kth_sim_B``: one comparison at query time instead
of a reverse ANN query per candidate (the same idea as CSLS's per-point neighbourhood radius against hubness).
A user with fewer than K compatible users gets ``kth_sim = -1`` (everyone compatible is in their top-K).

Next to ``kth_sim`` each user keeps ``kth_top``: ranks K-7..K of their top-K similarities (all of them
when they have fewer than K compatible users). That window is what makes an *incremental* refresh exact: a
new user enters B's top-K exactly when ``cos(t_B, v_new)`` beats ``kth_sim``, and the new ``kth_sim`` is then
read off the window merged with it, without scoring B against their whole pool again.

* :func:`refresh` — the full batch pass (``matcher refresh``): one ``scroll`` of the users collection with
  vectors, then exact brute force (``engine.topk.compatible_topk``: one matrix product per compatible
  group), about ``n x (compatible users per user) x dim`` multiply-adds — quadratic in n.
* :func:`refresh_changed` — what ingestion runs: recomputes exactly only the users whose top-K the change
  can move, and merges arrivals into the others' windows. It starts from the table the previous pass saved
  beside the store (``engine.refresh_cache``: validated by a token in META and a journal of every users
  point written since) and re-reads only the journaled users; without a cache it scrolls. Its work is then
  ``changes x pool x dim`` plus the writes, and the result equals a full pass
  (tests/engine/test_refresh_incremental.py).
* :func:`refresh_departed` / :func:`refresh_user` — ``delete-user`` and a new like history: a few users,
  each recomputed with one exact filtered top-K query of the store.

Only the points whose statistics changed are written, and only those payload keys (``Store.set_payload``:
on Edge the points keep their HNSW index, so no ``optimize()`` is needed). The exact top-K computation is
``engine.topk``; the users table and its cache are ``engine.refresh_cache``.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.compatibility import compatible_filter
from engine.errors import InvalidInput
from engine.likes import taste_payload
from engine.refresh_cache import Table, load, save
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
from engine.topk import NO_KTH, Groups, against, compatible_kth, compatible_topk, exact_kth

log = logging.getLogger(__name__)

# The payload keys this module writes (engine.schema documents them); older names, kept for callers.
KTH_FIELD, KTH_K_FIELD, TOP_FIELD = KTH_SIM, KTH_K, KTH_TOP
LIKED_FIELD, TASTE_FIELD = LIKED_IDS, TASTE
_Groups = Groups  # the name the bench and older callers use
__all__ = [
    "KTH_FIELD", "KTH_K_FIELD", "NO_KTH", "STAT_FIELDS", "TOP_FIELD", "compatible_kth", "compatible_topk", "exact_kth",
]  # fmt: skip
TOP_KEEP = 8  # entries kept in kth_top: a window absorbs at least 7 arrivals above it before a recompute
# A departed user counts as having been in B's top-K when their similarity is this close to B's last entry
# (float32 products computed in another shape differ in the last bits); a false alarm only costs a recompute.
_DEPARTED_TOL = 1e-5
_RETRIEVE = 1024  # ids per retrieve call


@dataclass(frozen=True)
class RefreshReport:
    users: int  # users points with a vector that got a kth_sim
    rewritten: int  # of those, the points whose statistics changed (only these are written)
    skipped: int  # users points without a usable vector or profile
    seconds: float
    recomputed: int = 0  # users scored against their whole compatible pool (all of them in a full pass)
    merged: int = 0  # users whose top-K list was updated by merging in arrivals (incremental pass only)
    cache: str = ""  # incremental pass: "used" (started from the saved table) or why it scrolled
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage: read, score, exact, write, save


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


def _tastes(table: Table, rows: Iterable[int], blend: float) -> dict[int, list[float] | None]:
    """The taste of each of ``rows`` from their like history and the current vectors (None without likes)."""
    out: dict[int, list[float] | None] = {}
    row_of: dict[str, int] | None = None
    for i in rows:
        liked_ids = table.liked_of(i)
        if len(liked_ids) == 0:
            out[i] = taste_payload(table.matrix[i], None, blend)
            continue
        if row_of is None:
            row_of = {str(u): r for r, u in enumerate(table.user_ids.tolist())}
        liked = [row_of[str(u)] for u in liked_ids.tolist() if str(u) in row_of]
        out[i] = taste_payload(table.matrix[i], table.matrix[liked] if liked else None, blend)
    return out


def _queries(table: Table, tastes: dict[int, list[float] | None]) -> np.ndarray:
    """(n, d) float32: what each user's list is ranked by (new taste, else stored taste, else mean vector)."""
    queries = table.matrix.copy()
    has = np.flatnonzero(table.taste_row >= 0)
    queries[has] = table.tastes[table.taste_row[has]]
    for i, t in tastes.items():
        queries[i] = table.matrix[i] if t is None else np.asarray(t, dtype=np.float32)
    return queries


def refresh(store: Store, settings: Settings, *, chunk: int = 2048) -> RefreshReport:
    """Recompute ``kth_sim``, ``kth_top`` (and ``taste`` where there are likes) for every user, write back
    what changed, and save the users table as the refresh cache (``engine.refresh_cache``): the full batch
    pass (``matcher refresh``).

    ``chunk``: most users scored in one similarity block (memory: ``chunk`` x compatible users x 4 bytes).
    Raises ``StoreUnavailable`` from the store; users without a vector or a readable profile are skipped
    (logged), not fatal, so one bad record cannot block the pass.
    """
    if chunk < 1:
        raise InvalidInput(f"chunk: must be positive, got {chunk}")
    t0 = time.perf_counter()
    k = settings.recommend.reciprocity_k
    table = Table.from_points(store.scroll(USERS, with_vectors=True))
    n = len(table)
    stages = {"read": time.perf_counter() - t0}
    # Tastes first: each user's list is ranked by their taste, so kth_sim is measured with it.
    tastes = _tastes(table, range(n), settings.recommend.taste_blend)
    top = compatible_topk(
        table.matrix, table.groups(), k, queries=_queries(table, tastes), block=chunk, progress=settings.progress
    )
    stages["exact"] = time.perf_counter() - t0 - sum(stages.values())
    changes = {}
    for i in range(n):
        change = _row_change(table, i, *_stats(top[i], k), k, tastes[i], retasted=True)
        if change is not None:
            changes[str(table.ids[i])] = change
    _write(store, changes, settings.ingest.write_batch_size)
    stages["write"] = time.perf_counter() - t0 - sum(stages.values())
    save(store, table)
    stages["save"] = time.perf_counter() - t0 - sum(stages.values())
    seconds = time.perf_counter() - t0
    log.info(
        "reciprocity refresh: %d users (K=%d), %d rewritten, in %.1f s; %d skipped",
        n, k, len(changes), seconds, len(table.skipped),
    )  # fmt: skip
    return RefreshReport(
        users=n,
        rewritten=len(changes),
        skipped=len(table.skipped),
        seconds=seconds,
        recomputed=n,
        merged=0,
        stages={key: round(v, 3) for key, v in stages.items()},
    )


@dataclass
class _Change:
    """The users table as it is now, and what changed since the stored statistics were computed."""

    table: Table
    arrivals: set[int]  # rows to treat as new users (recomputed; merged into others' windows)
    gone: Table  # users as they were when the statistics were computed, now deleted or changed
    retaste: set[int]  # rows whose like history or taste changed
    cache: str
    restat: set[int] = field(default_factory=set)  # rows whose statistics were written since the cache: recomputed


def _pids(user_ids: Iterable[str]) -> set[str]:
    return {user_point_id(str(u)) for u in user_ids}


def _from_cache(
    store: Store, arrived: Iterable[str], departed: Sequence[Departed], retasted: Iterable[str]
) -> _Change | str:
    """The change since the cached table was saved (the journaled users re-read), or why it cannot be used."""
    loaded = load(store)
    if loaded is None:
        return "no cache"
    old, journal = loaded
    touched = set(journal) | _pids(arrived) | _pids(retasted) | _pids(d.user_id for d in departed)
    row0 = {str(p): i for i, p in enumerate(old.ids.tolist())}
    wanted = sorted(touched)
    points = [
        p
        for s in range(0, len(wanted), _RETRIEVE)
        for p in store.retrieve(USERS, wanted[s : s + _RETRIEVE], with_vectors=True)
    ]
    fresh = Table.from_points(points, genders=old.genders)
    keep = np.ones(len(old), dtype=bool)
    keep[[row0[p] for p in touched if p in row0]] = False
    table = old.replaced(keep, fresh)
    skipped = sorted((set(old.skipped.tolist()) - touched) | set(fresh.skipped.tolist()))
    table.skipped = np.array(skipped, dtype=str) if skipped else np.zeros(0, "<U1")
    stored = store.count(USERS)
    if stored != len(table) + len(skipped):
        return f"the users collection holds {stored} points, the cache and its journal {len(table) + len(skipped)}"
    base = int(keep.sum())
    arrivals: set[int] = set()
    retaste: set[int] = set()
    restat: set[int] = set()
    now = set(fresh.ids.tolist())
    gone_rows = [row0[p] for p in touched if p in row0 and p not in now]
    for j, pid in enumerate(fresh.ids.tolist()):
        o = row0.get(pid)
        if o is None or not old.same_user(o, fresh, j):
            arrivals.add(base + j)
            if o is not None:
                gone_rows.append(o)
            continue
        if not old.same_likes(o, fresh, j):
            retaste.add(base + j)
        if not old.same_stats(o, fresh, j):
            # Written by a pass that did not save its table (killed): they may already hold this change's
            # arrivals, and merging is not idempotent, so they are recomputed.
            restat.add(base + j)
    return _Change(table, arrivals, old.take(sorted(gone_rows)), retaste, "used", restat)


def _from_scroll(
    store: Store, arrived: Iterable[str], departed: Sequence[Departed], retasted: Iterable[str], why: str
) -> _Change:
    table = Table.from_points(store.scroll(USERS, with_vectors=True))
    row_of = {str(p): i for i, p in enumerate(table.ids.tolist())}
    gone = Table.from_points(
        [Point(user_point_id(d.user_id), d.vector, d.profile.fields()) for d in departed], genders=table.genders
    )
    return _Change(
        table,
        {row_of[p] for p in _pids(arrived) if p in row_of},
        gone,
        {row_of[p] for p in _pids(retasted) if p in row_of},
        why,
    )


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
    With a trusted cache (``engine.refresh_cache``) these only add to what its journal lists; without one
    the users collection is scrolled and these must name every change.

    Exactly recomputed: arrivals, retasted users and users who liked an arrival (their taste changes), every
    user whose stored statistics are missing or were made with another K, every user a departed user was
    in the top-K of, and users whose stored window ran out. Everyone else compatible with an arrival gets it
    merged into their stored window when it beats their K-th. The result equals :func:`refresh`'s, and is
    saved as the next cache. Raises ``StoreUnavailable`` from the store.
    """
    if chunk < 1:
        raise InvalidInput(f"chunk: must be positive, got {chunk}")
    t0 = time.perf_counter()
    k = settings.recommend.reciprocity_k
    ch = _from_cache(store, arrived, departed, retasted)
    if isinstance(ch, str):
        log.info("reciprocity refresh reads every user (%s)", ch)
        ch = _from_scroll(store, arrived, departed, retasted, ch)
    table, n = ch.table, len(ch.table)
    stages = {"read": time.perf_counter() - t0}

    # Stored statistics; a user whose statistics cannot be trusted is recomputed, and handled as an
    # arrival (they may be missing from others' lists too, e.g. after a run stopped before its refresh).
    trusted = _trusted(table, k)
    recompute = ~trusted
    recompute[sorted(ch.restat)] = True
    last = np.where(table.kth == NO_KTH, -np.inf, table.kth)  # a complete list takes anyone compatible
    arrivals = sorted(ch.arrivals | set(np.flatnonzero(~trusted).tolist()))
    recompute[arrivals] = True
    moved = {str(u) for u in table.user_ids[arrivals].tolist()} | {str(u) for u in ch.gone.user_ids.tolist()}
    retaste = ch.retaste | set(arrivals) | table.rows_liking(moved)
    recompute[sorted(retaste)] = True
    tastes = _tastes(table, sorted(retaste), settings.recommend.taste_blend)
    queries = _queries(table, tastes)
    grp = table.groups()
    # Departures: whoever had a departed user in their top-K loses an entry they cannot refill alone.
    if len(ch.gone):
        for members, pool in against(grp, np.flatnonzero(~recompute), ch.gone.groups()):
            sims = queries[members] @ ch.gone.matrix[pool].T
            recompute[members[np.any(sims >= last[members, None] - _DEPARTED_TOL, axis=1)]] = True
    merged = _merge_arrivals(table, grp, queries, last, np.asarray(arrivals, dtype=np.int64), recompute, k)
    rows = np.flatnonzero(recompute)
    stages["score"] = time.perf_counter() - t0 - sum(stages.values())
    exact = compatible_topk(table.matrix, grp, k, rows=rows, queries=queries, block=chunk, progress=settings.progress)
    changes = {}
    for j, i in enumerate(rows.tolist()):
        change = _row_change(table, i, *_stats(exact[j], k), k, tastes.get(i), retasted=i in tastes)
        if change is not None:
            changes[str(table.ids[i])] = change
    for i, (kth, window) in merged.items():
        if not recompute[i]:
            change = _row_change(table, i, kth, window, k, None, retasted=False)
            if change is not None:
                changes[str(table.ids[i])] = change
    stages["exact"] = time.perf_counter() - t0 - sum(stages.values())
    _write(store, changes, settings.ingest.write_batch_size)
    stages["write"] = time.perf_counter() - t0 - sum(stages.values())
    save(store, table)
    stages["save"] = time.perf_counter() - t0 - sum(stages.values())
    seconds = time.perf_counter() - t0
    n_merged = sum(1 for i in merged if not recompute[i])
    log.info(
        "reciprocity refresh after %d arrivals, %d departures (cache: %s): %d of %d users recomputed, %d merged, "
        "%d rewritten, in %.1f s",
        len(arrivals), len(ch.gone), ch.cache, len(rows), n, n_merged, len(changes), seconds,
    )  # fmt: skip
    return RefreshReport(
        users=n,
        rewritten=len(changes),
        skipped=len(table.skipped),
        seconds=seconds,
        recomputed=len(rows),
        merged=n_merged,
        cache=ch.cache,
        stages={key: round(v, 3) for key, v in stages.items()},
    )


def _trusted(table: Table, k: int) -> np.ndarray:
    """(n,) bool: stored statistics usable for K (made with K, a window consistent with kth_sim)."""
    n = len(table)
    ok = (table.kth_k == k) & np.isfinite(table.kth) & (table.top_len >= 0)
    complete = table.kth == NO_KTH
    ok &= np.where(complete, table.top_len < k, (table.top_len >= 1) & (table.top_len <= min(k, TOP_KEEP)))
    last = table.top[np.arange(n), np.clip(table.top_len - 1, 0, None)] if n else np.zeros(0)
    ok &= complete | (np.abs(last - table.kth) <= 1e-6)
    return ok


def _merge_arrivals(
    table: Table, grp: Groups, queries: np.ndarray, last: np.ndarray, arr: np.ndarray, recompute: np.ndarray, k: int
) -> dict[int, tuple[float, list[float]]]:
    """Score every user not recomputed against the arrivals compatible with them, and merge those that beat
    their K-th into their window. Users whose window runs out are marked in ``recompute``. Returns row ->
    the new (kth_sim, kth_top) of each user an arrival entered."""
    if len(arr) == 0:
        return {}
    arrivals = table.take(arr)
    who: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for members, pool in against(grp, np.flatnonzero(~recompute), arrivals.groups()):
        sims = queries[members] @ table.matrix[arr[pool]].T
        r, c = np.nonzero(sims > last[members, None])
        who.append(members[r])
        vals.append(sims[r, c])
    if not who:
        return {}
    rec, val = np.concatenate(who), np.concatenate(vals).astype(np.float64)
    order = np.lexsort((-val, rec))  # by receiver, best first
    rec, val = rec[order], val[order]
    starts = np.flatnonzero(np.r_[True, rec[1:] != rec[:-1]])
    out: dict[int, tuple[float, list[float]]] = {}
    for s, e in zip(starts.tolist(), [*starts[1:].tolist(), len(rec)], strict=True):
        i = int(rec[s])
        window = table.top[i, : table.top_len[i]].tolist()
        got = _merge(float(table.kth[i]), window, val[s:e].tolist(), k)
        if got is None:
            recompute[i] = True  # the window ran out: more arrivals above it than it could absorb
        else:
            out[i] = got
    return out


def _row_change(
    table: Table, i: int, kth: float, window: list[float], k: int, taste: list[float] | None, *, retasted: bool
) -> dict[str, Any] | None:
    """The payload keys to write for row ``i`` (None when nothing changed beyond float noise); the table is
    updated to what is then stored. ``taste`` is written only when ``retasted``."""
    change: dict[str, Any] = {}
    n_old = int(table.top_len[i])
    old_top = table.top[i, :n_old].tolist() if n_old >= 0 else None
    old_kth = float(table.kth[i])
    if (
        not np.isfinite(old_kth)
        or abs(old_kth - kth) > 1e-6
        or int(table.kth_k[i]) != k
        or old_top is None
        or len(old_top) != len(window)
        or any(abs(a - b) > 1e-6 + 1e-5 * abs(b) for a, b in zip(old_top, window, strict=True))
    ):
        # The three statistics are written together, so a stored window always matches its kth_sim and K.
        change.update({KTH_FIELD: kth, KTH_K_FIELD: k, TOP_FIELD: window})
    if retasted and _taste_changed(table.stored_taste(i), taste):
        change.update({KTH_FIELD: kth, KTH_K_FIELD: k, TOP_FIELD: window, TASTE_FIELD: taste})  # None deletes
        table.set_taste(i, taste)
    if change:
        table.set_stats(i, kth, k, window)
    return change or None


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
