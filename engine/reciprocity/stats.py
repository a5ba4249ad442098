"""The per-user bookkeeping the reciprocity passes share (``engine.reciprocity``,
``engine.reciprocity.incremental``): a user's statistics from their top-K row, what is stored, what changed
and must be written, tastes, and merging new similarities into a stored window.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.likes import taste_payload
from engine.reciprocity.table import Table
from engine.reciprocity.topk import NO_KTH
from engine.schema import KTH_K, KTH_SIM, KTH_TOP, STAT_FIELDS, TASTE, USERS, Profile, window_of, window_value
from engine.store.base import Store

TOP_KEEP = 8  # entries kept in kth_top: a window absorbs at least 7 arrivals above it before a recompute
# A departed user counts as having been in B's top-K when their similarity is this close to B's last entry
# (float32 products computed in another shape differ in the last bits); a false alarm only costs a recompute.
DEPARTED_TOL = 1e-5
RETRIEVE = 1024  # ids per retrieve call


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


def tastes_of(table: Table, rows: Iterable[int], blend: float) -> dict[int, list[float] | None]:
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


def queries_of(table: Table, tastes: dict[int, list[float] | None]) -> np.ndarray:
    """(n, d) float32: what each user's list is ranked by (new taste, else stored taste, else mean vector).
    Read only: where nobody has a taste it is ``table.matrix`` itself (no copy of the n x d matrix)."""
    has = np.flatnonzero(table.taste_row >= 0)
    if len(has) == 0 and all(t is None for t in tastes.values()):
        return table.matrix
    queries = table.matrix.copy()
    queries[has] = table.tastes[table.taste_row[has]]
    for i, t in tastes.items():
        queries[i] = table.matrix[i] if t is None else np.asarray(t, dtype=np.float32)
    return queries


def row_change(
    table: Table, i: int, kth: float, window: list[float], k: int, taste: list[float] | None, *, retasted: bool
) -> dict[str, Any] | None:
    """What changed for row ``i`` under the payload key names (None when nothing changed beyond float noise):
    the statistics (``kth_top`` as a list: they go to the blocks, ``engine.reciprocity.blocks``, not to the
    payload) and the ``taste`` payload key, written only when ``retasted``. The table is updated to it."""
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
        change.update({KTH_SIM: kth, KTH_K: k, KTH_TOP: list(window)})
    if retasted and taste_changed(table.stored_taste(i), taste):
        change.update({KTH_SIM: kth, KTH_K: k, KTH_TOP: list(window), TASTE: taste})  # None deletes
        table.set_taste(i, taste)
    if change:
        table.set_stats(i, kth, k, window)
    return change or None


def rows_change(table: Table, stats: dict[int, tuple[float, list[float]]], k: int) -> dict[str, dict[str, Any]]:
    """:func:`row_change` for many rows at once, without tastes: ``stats`` maps row -> new ``(kth_sim,
    kth_top)``. Returns point id -> the new statistics (as :func:`row_change`), for the rows whose statistics
    changed beyond float noise (the same test as :func:`row_change`), and updates the table to them
    (:func:`rows_moved` on the same values as arrays)."""
    if not stats:
        return {}
    rows = np.fromiter(stats, dtype=np.int64, count=len(stats))
    windows = [stats[i][1] for i in rows.tolist()]
    kths = np.array([stats[i][0] for i in rows.tolist()], dtype=np.float64)
    lens = np.array([len(w) for w in windows], dtype=np.int64)
    moved = rows_moved(table, rows, kths, windows_array(windows, lens), lens, k)
    # Python values in bulk (one str() of a numpy scalar per row cost ~10 us: 0.4 s for 39,000 users).
    pids, new_kth = table.ids[rows[moved]].tolist(), kths[moved].tolist()
    return {
        pid: {KTH_SIM: kv, KTH_K: k, KTH_TOP: windows[j]}
        for pid, kv, j in zip(pids, new_kth, moved.tolist(), strict=True)
    }


def windows_array(windows: list[list[float]], lens: np.ndarray) -> np.ndarray:
    """Windows (best first) as one (m, max(8, longest)) float64 array, NaN-padded."""
    width = max(8, int(lens.max(initial=0)))
    out = np.full((len(windows), width), np.nan)
    which = np.repeat(np.arange(len(windows)), lens)  # row of each window entry, and its column below
    out[which, np.arange(len(which)) - np.repeat(np.cumsum(lens) - lens, lens)] = [x for w in windows for x in w]
    return out


def rows_moved(
    table: Table, rows: np.ndarray, kths: np.ndarray, new_top: np.ndarray, lens: np.ndarray, k: int
) -> np.ndarray:
    """New statistics for ``rows`` ((m,) distinct rows; ``kths`` (m,), ``new_top`` (m, W) NaN-padded windows,
    ``lens`` (m,)): the table takes those that changed beyond float noise (the test of :func:`row_change`).
    Returns the positions in ``rows`` that changed. Array operations throughout: the merged users of an
    incremental pass are ~40 % of everyone."""
    if len(rows) == 0:
        return np.zeros(0, np.int64)
    width = max(table.top.shape[1], new_top.shape[1])
    if width > table.top.shape[1]:
        table.top = np.pad(table.top, ((0, 0), (0, width - table.top.shape[1])), constant_values=np.nan)
    if width > new_top.shape[1]:
        new_top = np.pad(new_top, ((0, 0), (0, width - new_top.shape[1])), constant_values=np.nan)
    old_kth = table.kth[rows]
    same = (
        np.isfinite(old_kth)
        & (np.abs(old_kth - kths) <= 1e-6)
        & (table.kth_k[rows] == k)
        & (table.top_len[rows] == lens)
        & np.all(np.isclose(table.top[rows], new_top, rtol=1e-5, atol=1e-6, equal_nan=True), axis=1)
    )
    moved = np.flatnonzero(~same)
    r = rows[moved]
    table.kth[r], table.kth_k[r], table.top_len[r], table.top[r] = kths[moved], k, lens[moved], new_top[moved]
    return moved


def top_stats(top: np.ndarray, k: int) -> tuple[float, list[float]]:
    """``(kth_sim, kth_top)`` from one row of :func:`compatible_topk` ((k,) best first, -inf padded)."""
    vals = top[np.isfinite(top)]
    if len(vals) >= k:
        return float(vals[k - 1]), [float(x) for x in vals[max(0, k - TOP_KEEP) : k]]
    return NO_KTH, [float(x) for x in vals]


def stored_stats(payload: dict[str, Any], k: int) -> tuple[float, list[float]] | None:
    """The stored ``(kth_sim, kth_top)`` when usable for K (consistent with each other), else None."""
    lst, kth = window_of(payload.get(KTH_TOP)), payload.get(KTH_SIM)
    if payload.get(KTH_K) != k or lst is None or not isinstance(kth, int | float):
        return None
    if kth == NO_KTH:
        return (NO_KTH, lst) if len(lst) < k else None
    if not 1 <= len(lst) <= min(k, TOP_KEEP) or abs(float(lst[-1]) - float(kth)) > 1e-6:
        return None
    return float(kth), lst


def payload_change(
    old: dict[str, Any], kth: float, window: list[float], k: int, taste: list[float] | None, *, retasted: bool
) -> dict[str, Any] | None:
    """The payload keys to write for one user (None when nothing changed beyond float noise).

    ``taste`` is written only when ``retasted``."""
    change: dict[str, Any] = {}
    old_kth, old_top = old.get(KTH_SIM), window_of(old.get(KTH_TOP))
    if (
        not isinstance(old_kth, int | float)
        or abs(float(old_kth) - kth) > 1e-6
        or old.get(KTH_K) != k
        or old_top is None
        or len(old_top) != len(window)
        or not np.allclose(np.asarray(old_top, dtype=np.float64), window, atol=1e-6)
    ):
        # The three statistics are written together, so a stored window always matches its kth_sim and K.
        change.update({KTH_SIM: kth, KTH_K: k, KTH_TOP: window_value(window)})
    if retasted and taste_changed(old.get(TASTE), taste):
        change.update({KTH_SIM: kth, KTH_K: k, KTH_TOP: window_value(window), TASTE: taste})  # None deletes
    return change or None


def taste_changed(old: Any, taste: list[float] | None) -> bool:
    if (old is None) != (taste is None):
        return True
    if taste is None:
        return False
    before = np.asarray(old, dtype=np.float64)
    return before.shape != (len(taste),) or not np.allclose(before, taste, atol=1e-6)


def write_changes(store: Store, changes: dict[str, dict[str, Any]], batch: int, *, legacy: Iterable[str] = ()) -> int:
    """Write the payload part of ``changes`` (point id -> keys, as :func:`row_change` returns them): the
    ``taste`` of users whose like history changed. The statistics themselves are not payload keys any more
    (``engine.reciprocity.blocks``); ``legacy`` names points whose payload still holds them from a store
    written before the blocks, and these keys are removed there. Returns how many points were written."""
    out: dict[str, dict[str, Any]] = {}
    for pid in legacy:
        out[pid] = dict.fromkeys(STAT_FIELDS)  # None deletes the key
    for pid, ch in changes.items():
        rest = {k: v for k, v in ch.items() if k not in STAT_FIELDS}
        if rest:
            out.setdefault(pid, {}).update(rest)
    ids = list(out)
    for start in range(0, len(ids), batch):
        store.set_payload(USERS, {pid: out[pid] for pid in ids[start : start + batch]})
    return len(ids)


def merge_window(kth: float, window: list[float], vals: list[float], k: int) -> tuple[float, list[float]] | None:
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
