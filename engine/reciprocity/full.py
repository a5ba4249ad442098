"""The full reciprocity pass, and the passes for a few users: deletions and a new like history (see the
package docstring, ``engine.reciprocity``, for the statistics themselves).

* :func:`refresh` — the full batch pass (``matcher refresh``): one ``scroll`` of the users collection with
  vectors, then exact brute force (``engine.reciprocity.topk.compatible_topk``: one matrix product per
  compatible group), about ``n x (compatible users per user) x dim`` multiply-adds — quadratic in n. It saves
  the users table beside the store for the incremental pass (``engine.reciprocity.table``).
* :func:`refresh_departed` / :func:`refresh_user` — ``delete-user`` and a new like history: a few users,
  each recomputed with one exact filtered top-K query of the store.
* :func:`departures` — the stored state of users about to be deleted or rewritten, for
  ``engine.reciprocity.incremental.refresh_changed``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from engine.compatibility import compatible_filter
from engine.errors import InvalidInput
from engine.reciprocity.blocks import Stats, read_version, stored, write_rows, write_set
from engine.reciprocity.stats import (
    DEPARTED_TOL,
    Departed,
    RefreshReport,
    payload_change,
    queries_of,
    row_change,
    stored_stats,
    tastes_of,
    top_stats,
    write_changes,
)
from engine.reciprocity.table import Table, overlay, save, table_stats
from engine.reciprocity.topk import NO_KTH, compatible_topk
from engine.schema import KTH_K, KTH_SIM, KTH_TOP, TASTE, USERS, Profile, usable_vector, user_point_id, window_of
from engine.settings import Settings
from engine.store.base import Point, Query, ScoredPoint, Store

log = logging.getLogger(__name__)

__all__ = ["departures", "kth_from_results", "refresh", "refresh_departed", "refresh_user"]


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


def refresh(store: Store, settings: Settings, *, chunk: int = 2048) -> RefreshReport:
    """Recompute ``kth_sim``, ``kth_top`` (and ``taste`` where there are likes) for every user, write back
    what changed, and save the users table as the refresh cache (``engine.reciprocity.table``): the full batch
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
    # Rows whose payload still holds statistics (a store written before the blocks): removed there below.
    legacy = table.ids[(table.kth_k >= 0) | np.isfinite(table.kth) | (table.top_len >= 0)].tolist()
    overlay(table, stored(store))
    stages = {"read": time.perf_counter() - t0}
    # Tastes first: each user's list is ranked by their taste, so kth_sim is measured with it.
    tastes = tastes_of(table, range(n), settings.recommend.taste_blend)
    top = compatible_topk(
        table.matrix, table.groups(), k, queries=queries_of(table, tastes), block=chunk, progress=settings.progress
    )
    stages["exact"] = time.perf_counter() - t0 - sum(stages.values())
    changes = {}
    for i in range(n):
        change = row_change(table, i, *top_stats(top[i], k), k, tastes[i], retasted=True)
        if change is not None:
            changes[str(table.ids[i])] = change
    write_changes(store, changes, settings.ingest.write_batch_size, legacy=legacy)
    version = read_version(store)
    if changes or version is None or version.rows != n:
        version = write_set(store, table_stats(table))  # ~50 block upserts at 100,000 users
    stages["write"] = time.perf_counter() - t0 - sum(stages.values())
    save(store, table, version.key)
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


def refresh_departed(
    store: Store,
    settings: Settings,
    departed: Sequence[Departed],
    *,
    retasted: Iterable[str] = (),
    erased: Iterable[str] = (),
) -> int:
    """After a few users were deleted (``delete-user``): recompute exactly the users who had one of them in
    their top-K, and the ``retasted`` users, without reading the whole population.

    Reads only each departed user's compatible pool (a filtered scroll: the only users whose top-K can have
    held them), and recomputes each hit with one exact filtered top-K query (:func:`refresh_user`). Same
    result as :func:`refresh_changed` for deletions; for many changes that one is cheaper. The departed
    users' and ``erased`` users' rows leave the stored statistics (every block is rewritten without them,
    ``engine.reciprocity.blocks``). Returns how many users were rewritten. Raises ``StoreUnavailable`` from
    the store."""
    k = settings.recommend.reciprocity_k
    blocks = stored(store)
    hits: set[str] = {user_point_id(str(u)) for u in retasted}
    for d in departed:
        for p in store.scroll(USERS, compatible_filter(d.profile), with_vectors=True):
            own = usable_vector(p)
            stored_now = stored_stats(_stats_payload(blocks, p), k)
            if own is None or stored_now is None:
                continue  # no statistics to keep right (the next refresh computes them)
            taste = (p.payload or {}).get(TASTE)
            q = np.asarray(taste, dtype=np.float32) if taste is not None else own
            if stored_now[0] == NO_KTH or float(q @ d.vector) >= stored_now[0] - DEPARTED_TOL:
                hits.add(p.id)
    points = {p.id: p for p in store.retrieve(USERS, sorted(hits), with_vectors=True)}
    changes = {pid: _point_change(store, settings, points[pid], blocks) for pid in sorted(points)}
    gone = sorted({user_point_id(d.user_id) for d in departed} | {user_point_id(str(u)) for u in erased})
    _write_point_changes(store, blocks, {pid: c for pid, c in changes.items() if c is not None}, gone)
    return sum(c is not None for c in changes.values())


def refresh_user(store: Store, settings: Settings, user_id: str) -> bool:
    """Recompute one user's own statistics after their taste changed (a new like history), with one exact
    filtered top-K query of the store: nobody else's statistics depend on a user's taste (candidates are
    judged by their mean vectors). Returns whether anything was written; an unknown user, or one without a
    usable vector or profile, is left alone (False). Raises ``StoreUnavailable`` from the store."""
    points = store.retrieve(USERS, [user_point_id(str(user_id))], with_vectors=True)
    if not points:
        return False
    blocks = stored(store)
    change = _point_change(store, settings, points[0], blocks)
    if change is not None:
        _write_point_changes(store, blocks, {points[0].id: change}, [])
    return change is not None


def _stats_payload(blocks: Stats | None, p: Point) -> dict[str, Any]:
    """The user's stored statistics under the payload keys: from the blocks where they exist, else from the
    payload (a store written before them)."""
    return blocks.payload_of(p.id) if blocks is not None else (p.payload or {})


def _write_point_changes(
    store: Store, blocks: Stats | None, changes: dict[str, dict[str, Any]], gone: Sequence[str]
) -> None:
    """Statistics of a few users (point id -> payload keys): a patch of the blocks (or their rewrite when
    ``gone`` rows must leave them), or partial payload updates on a store that has no blocks yet."""
    if blocks is None:
        if changes:
            store.set_payload(USERS, changes)
        return
    ids = list(changes)
    windows = [window_of(changes[p][KTH_TOP]) or [] for p in ids]
    width = max([8, *(len(w) for w in windows)])
    top = np.full((len(ids), width), np.nan)
    for i, w in enumerate(windows):
        top[i, : len(w)] = w
    rows = Stats.of(
        ids,
        np.array([changes[p][KTH_SIM] for p in ids], np.float64),
        np.array([changes[p][KTH_K] for p in ids], np.int64),
        top,
        np.array([len(w) for w in windows], np.int64),
    )
    if len(rows) or gone:
        write_rows(store, blocks, rows, erased=gone)


def _point_change(store: Store, settings: Settings, p: Point, blocks: Stats | None) -> dict[str, Any] | None:
    """The statistics to write for one user (payload keys; None when unchanged or not computable)."""
    own = usable_vector(p)
    if own is None:
        return None
    try:
        profile = Profile.from_payload(p.payload, where=f"users point {p.id}")
    except InvalidInput:
        return None
    k = settings.recommend.reciprocity_k
    taste = (p.payload or {}).get(TASTE)
    q = np.asarray(taste, dtype=np.float32) if taste is not None else own
    query = Query(vector=q, limit=k, filter=compatible_filter(profile), with_payload=False, exact=True)
    found = store.query(USERS, query)
    top = np.full(k, -np.inf, dtype=np.float32)
    top[: len(found)] = [r.score for r in found]
    return payload_change(_stats_payload(blocks, p), *top_stats(top, k), k, None, retasted=False)
