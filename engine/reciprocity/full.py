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

import numpy as np

from engine.compatibility import compatible_filter
from engine.errors import InvalidInput
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
from engine.reciprocity.table import Table, save
from engine.reciprocity.topk import NO_KTH, compatible_topk
from engine.schema import TASTE, USERS, Profile, usable_vector, user_point_id
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
    write_changes(store, changes, settings.ingest.write_batch_size)
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
            stored = stored_stats(p.payload or {}, settings.recommend.reciprocity_k)
            if own is None or stored is None:
                continue  # no statistics to keep right (the next refresh computes them)
            taste = (p.payload or {}).get(TASTE)
            q = np.asarray(taste, dtype=np.float32) if taste is not None else own
            if stored[0] == NO_KTH or float(q @ d.vector) >= stored[0] - DEPARTED_TOL:
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
    taste = (p.payload or {}).get(TASTE)
    q = np.asarray(taste, dtype=np.float32) if taste is not None else own
    query = Query(vector=q, limit=k, filter=compatible_filter(profile), with_payload=False, exact=True)
    found = store.query(USERS, query)
    top = np.full(k, -np.inf, dtype=np.float32)
    top[: len(found)] = [r.score for r in found]
    change = payload_change(p.payload or {}, *top_stats(top, k), k, None, retasted=False)
    if change is not None:
        store.set_payload(USERS, {p.id: change})
    return change is not None
