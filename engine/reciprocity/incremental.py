"""The incremental reciprocity pass (``refresh_changed``, what ingestion runs): recompute exactly only the
users whose top-K a change can move, and merge arrivals into the others' stored windows; see
``engine.reciprocity`` for the statistics and the passes, ``engine.reciprocity.table`` for the table it starts
from.

Its products run on one BLAS thread (``threadpoolctl``): they are many small ones (a few hundred rows against
one compatible group at a time), where a second thread waits more than it works. Measured at 100,000 users
(docs/benchmarks.md): incremental / full 0.101-0.167 wall with two threads for both passes, 0.069 with one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from engine.errors import InvalidInput
from engine.reciprocity.blocks import read_version, stored, write_set
from engine.reciprocity.stats import (
    DEPARTED_TOL,
    RETRIEVE,
    TOP_KEEP,
    Departed,
    RefreshReport,
    merge_window,
    queries_of,
    row_change,
    rows_moved,
    tastes_of,
    top_stats,
    windows_array,
    write_changes,
)
from engine.reciprocity.table import Table, load, overlay, save, table_stats
from engine.reciprocity.topk import NO_KTH, Groups, against, compatible_topk
from engine.schema import USERS, user_point_id
from engine.settings import Settings
from engine.store.base import Point, Store

log = logging.getLogger(__name__)


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
    old, journal, cached_version = loaded
    touched = set(journal) | _pids(arrived) | _pids(retasted) | _pids(d.user_id for d in departed)
    wanted = sorted(touched)
    # Rows of the touched users only (a dict of every id cost more than the rest of this step).
    hit = np.flatnonzero(np.isin(old.ids, np.array(wanted, dtype=str))) if wanted else np.zeros(0, np.int64)
    row0 = {str(old.ids[i]): int(i) for i in hit.tolist()}
    points = [
        p
        for s in range(0, len(wanted), RETRIEVE)
        for p in store.retrieve(USERS, wanted[s : s + RETRIEVE], with_vectors=True)
    ]
    fresh = Table.from_points(points, genders=old.genders)
    version = read_version(store)
    if version is not None:
        # Statistics live in the blocks, not in the re-read payloads: each re-read user keeps the cached row's
        # (compared with the blocks below when they moved since the cache was saved).
        take = np.array([row0.get(str(pid), -1) for pid in fresh.ids.tolist()], dtype=np.int64)
        cached = old.take(np.maximum(take, 0)) if len(old) else None
        if cached is not None:
            cached.kth[take < 0], cached.kth_k[take < 0], cached.top_len[take < 0] = np.nan, -1, -1
            fresh.kth, fresh.kth_k, fresh.top, fresh.top_len = cached.kth, cached.kth_k, cached.top, cached.top_len
        else:
            fresh.kth[:], fresh.kth_k[:], fresh.top_len[:] = np.nan, -1, -1
    keep = np.ones(len(old), dtype=bool)
    keep[[row0[p] for p in touched if p in row0]] = False
    table = old.replaced(keep, fresh)
    skipped = sorted((set(old.skipped.tolist()) - touched) | set(fresh.skipped.tolist()))
    table.skipped = np.array(skipped, dtype=str) if skipped else np.zeros(0, "<U1")
    stored_n = store.count(USERS)
    if stored_n != len(table) + len(skipped):
        return f"the users collection holds {stored_n} points, the cache and its journal {len(table) + len(skipped)}"
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
    if version is not None and version.key != cached_version:
        # Statistics written since the cache was saved (a pass killed before saving it, a like's patch): the
        # blocks are what is stored; the users whose row moved are recomputed (merging is not idempotent).
        before = (table.kth.copy(), table.kth_k.copy(), table.top.copy(), table.top_len.copy())
        overlay(table, stored(store))
        restat |= set(np.flatnonzero(~_same_stats(before, table)).tolist())
    return _Change(table, arrivals, old.take(sorted(gone_rows)), retaste, "used", restat)


def _same_stats(before: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], table: Table) -> np.ndarray:
    """(n,) bool: rows whose statistics equal ``before`` (kth, kth_k, top, top_len), NaN equal to NaN."""
    kth, kk, top, tl = before
    width = max(top.shape[1], table.top.shape[1])
    a = np.pad(top, ((0, 0), (0, width - top.shape[1])), constant_values=np.nan)
    b = np.pad(table.top, ((0, 0), (0, width - table.top.shape[1])), constant_values=np.nan)
    same_top = np.all((a == b) | (np.isnan(a) & np.isnan(b)), axis=1)
    return (
        ((kth == table.kth) | (np.isnan(kth) & np.isnan(table.kth))) & (kk == table.kth_k) & (tl == table.top_len)
        & same_top
    )  # fmt: skip


def _from_scroll(
    store: Store, arrived: Iterable[str], departed: Sequence[Departed], retasted: Iterable[str], why: str
) -> _Change:
    table = Table.from_points(store.scroll(USERS, with_vectors=True))
    overlay(table, stored(store))  # where the blocks exist, they hold the statistics, not the payloads
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
    With a trusted cache (``engine.reciprocity.table``) these only add to what its journal lists; without one
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

    with threadpool_limits(limits=1, user_api="blas"):  # small products: one BLAS thread (docstring)
        changes, n_rewritten, n_merged, n_arrivals, n_recomputed = _recompute(table, ch, k, settings, chunk, stages, t0)
    write_changes(store, changes, settings.ingest.write_batch_size)
    version = read_version(store)
    if n_rewritten or version is None or version.rows != len(table):
        # The whole table's statistics as a new block set: ~50 upserts at 100,000 users, where the payloads
        # took one partial update per user whose statistics moved (~40 % of users after 1 % arrived).
        version = write_set(store, table_stats(table))
    stages["write"] = time.perf_counter() - t0 - sum(stages.values())
    save(store, table, version.key)
    stages["save"] = time.perf_counter() - t0 - sum(stages.values())
    seconds = time.perf_counter() - t0
    log.info(
        "reciprocity refresh after %d arrivals, %d departures (cache: %s): %d of %d users recomputed, %d merged, "
        "%d rewritten, in %.1f s",
        n_arrivals, len(ch.gone), ch.cache, n_recomputed, n, n_merged, n_rewritten, seconds,
    )  # fmt: skip
    return RefreshReport(
        users=n,
        rewritten=n_rewritten,
        skipped=len(table.skipped),
        seconds=seconds,
        recomputed=n_recomputed,
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


@dataclass(frozen=True)
class _Merged:
    """The new statistics of the users an arrival entered: ``rows`` (m,), ``kth`` (m,), ``top`` (m, W)
    NaN-padded windows best first, ``lens`` (m,)."""

    rows: np.ndarray
    kth: np.ndarray
    top: np.ndarray
    lens: np.ndarray

    @classmethod
    def empty(cls) -> _Merged:
        return cls(np.zeros(0, np.int64), np.zeros(0), np.full((0, TOP_KEEP), np.nan), np.zeros(0, np.int64))


def _merge_arrivals(
    table: Table, grp: Groups, queries: np.ndarray, last: np.ndarray, arr: np.ndarray, recompute: np.ndarray, k: int
) -> _Merged:
    """Score every user not recomputed against the arrivals compatible with them, and merge those that beat
    their K-th into their window. Users whose window runs out are marked in ``recompute``. Returns the new
    statistics of each user an arrival entered (and whose window did not run out)."""
    if len(arr) == 0:
        return _Merged.empty()
    arrivals = table.take(arr)
    who: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for members, pool in against(grp, np.flatnonzero(~recompute), arrivals.groups()):
        sims = queries[members] @ table.matrix[arr[pool]].T
        r, c = np.nonzero(sims > last[members, None])
        who.append(members[r])
        vals.append(sims[r, c])
    rec, val = (np.concatenate(who), np.concatenate(vals).astype(np.float64)) if who else (np.zeros(0), np.zeros(0))
    if len(rec) == 0:  # nobody's K-th beaten (before, an empty list here failed on its first receiver)
        return _Merged.empty()
    order = np.lexsort((-val, rec))  # by receiver, best first
    rec, val = rec[order], val[order]
    starts = np.flatnonzero(np.r_[True, rec[1:] != rec[:-1]])
    counts = np.diff(np.r_[starts, len(rec)])
    recv = rec[starts]
    # Most receivers get one arrival above their K-th (each top-50 gains ~0.5 of 1 % newcomers): merged as
    # arrays, exactly as merge_window does; the others (several arrivals, or a complete list) one by one.
    one = (counts == 1) & (table.kth[recv] != NO_KTH) & (table.top_len[recv] >= 1)
    parts = [_merge_one(table, recv[one], val[starts[one]], k, recompute)]
    rest_rows: list[int] = []
    rest_kth: list[float] = []
    rest_windows: list[list[float]] = []
    for s, e in zip(starts[~one].tolist(), (starts + counts)[~one].tolist(), strict=True):
        i = int(rec[s])
        window = table.top[i, : table.top_len[i]].tolist()
        got = merge_window(float(table.kth[i]), window, val[s:e].tolist(), k)
        if got is None:
            recompute[i] = True  # the window ran out: more arrivals above it than it could absorb
        else:
            rest_rows.append(i)
            rest_kth.append(got[0])
            rest_windows.append(got[1])
    lens = np.array([len(w) for w in rest_windows], dtype=np.int64)
    parts.append(_Merged(np.array(rest_rows, np.int64), np.array(rest_kth), windows_array(rest_windows, lens), lens))
    width = max(p.top.shape[1] for p in parts)
    pad = [np.pad(p.top, ((0, 0), (0, width - p.top.shape[1])), constant_values=np.nan) for p in parts]
    return _Merged(
        np.concatenate([p.rows for p in parts]), np.concatenate([p.kth for p in parts]), np.concatenate(pad),
        np.concatenate([p.lens for p in parts]),
    )  # fmt: skip


def _merge_one(table: Table, rows: np.ndarray, s: np.ndarray, k: int, recompute: np.ndarray) -> _Merged:
    """``merge_window`` for users with one new similarity ``s`` each ((m,), above their K-th) and a stored
    K-th (not a complete list), as arrays: below the window's first entry (or a window of all K) it is
    inserted and the last entry drops out; otherwise the window loses its last entry (its first rank is no
    longer known). A window left empty marks the user in ``recompute``."""
    top = table.top[rows]
    lens = table.top_len[rows]
    width = top.shape[1]
    cols = np.arange(width)[None, :]
    inside = (lens == k) | (s < top[:, 0])
    held = np.where(cols < lens[:, None], top, -np.inf)
    ext = -np.sort(-np.concatenate([held, s[:, None]], axis=1), axis=1)[:, :width]
    new_lens = np.where(inside, lens, lens - 1)
    new = np.where(cols < new_lens[:, None], np.where(inside[:, None], ext, top), np.nan)
    ok = new_lens >= 1
    recompute[rows[~ok]] = True
    rows, new, new_lens = rows[ok], new[ok], new_lens[ok]
    return _Merged(rows, new[np.arange(len(rows)), new_lens - 1], new, new_lens)


def _recompute(
    table: Table, ch: _Change, k: int, settings: Settings, chunk: int, stages: dict[str, float], t0: float
) -> tuple[dict[str, dict[str, Any]], int, int, int, int]:
    """The incremental pass's products (``refresh_changed``'s score and exact stages, timed into ``stages``):
    the changes to write, and how many users are rewritten, merged, arrivals and recomputed."""
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
    tastes = tastes_of(table, sorted(retaste), settings.recommend.taste_blend)
    queries = queries_of(table, tastes)
    grp = table.groups()
    # Departures: whoever had a departed user in their top-K loses an entry they cannot refill alone.
    if len(ch.gone):
        for members, pool in against(grp, np.flatnonzero(~recompute), ch.gone.groups()):
            sims = queries[members] @ ch.gone.matrix[pool].T
            recompute[members[np.any(sims >= last[members, None] - DEPARTED_TOL, axis=1)]] = True
    merged = _merge_arrivals(table, grp, queries, last, np.asarray(arrivals, dtype=np.int64), recompute, k)
    rows = np.flatnonzero(recompute)
    stages["score"] = time.perf_counter() - t0 - sum(stages.values())
    exact = compatible_topk(table.matrix, grp, k, rows=rows, queries=queries, block=chunk, progress=settings.progress)
    changes = {}
    for j, i in enumerate(rows.tolist()):
        change = row_change(table, i, *top_stats(exact[j], k), k, tastes.get(i), retasted=i in tastes)
        if change is not None:
            changes[str(table.ids[i])] = change
    keep = ~recompute[merged.rows]
    moved_rows = rows_moved(table, merged.rows[keep], merged.kth[keep], merged.top[keep], merged.lens[keep], k)
    # The merged users' statistics go to the blocks with everyone's: only the count is needed of them here.
    n_rewritten = len(changes) + len(moved_rows)
    stages["exact"] = time.perf_counter() - t0 - sum(stages.values())
    return changes, n_rewritten, int(keep.sum()), len(arrivals), len(rows)
