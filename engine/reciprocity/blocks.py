"""Where the reciprocity statistics live: columnar blocks in ``matcher_meta``, and a per-process copy of
them that is never stale (``engine.store.meta_blocks``, as the preference model's blocks).

Stored (all in the ``META`` collection, 1-d placeholder vectors)::

    block points       rows of ``CHUNK_ROWS`` users each, sorted by point id: the point ids (ASCII bytes),
                       ``kth_sim`` (float64), ``kth_k`` (int64), the window ``kth_top`` (float64, as one
                       flat array and each row's length), base64 (``engine.store.meta_blocks.encode``); each
                       block's payload names its set (``SET_KEY``) and ``KIND``
    patch points       rows a small pass rewrote (``refresh_user`` after a like), one point per generation
    STATS_VERSION_POINT_ID   ``{"set", "gen", "chunks", "rows", "patched"}``: written last, so a reader that
                       sees it finds every block it names

Why not the users' payloads, where they lived before: adding 1 % of users moves the K-th neighbour of ~39 % of
users, and the Edge bindings take no batch of different payloads, so an incremental pass made ~39,000 partial
payload updates at 100,000 users (2.9 CPU s of its ~6.7, docs/benchmarks.md). Here a pass over the users table
(``engine.reciprocity.full.refresh``, ``engine.reciprocity.incremental.refresh_changed``) writes the whole set
again: ~50 block upserts at 100,000 users, under a new set id, the version point, then the previous set is
deleted (every block point of another set, so one a killed write left is removed too). A pass over a few users
writes one patch, or the whole set when ``PATCH_GENS`` patches or ``PATCHED_SHARE`` of the rows have piled up.
An erasure (``delete-user``) writes the whole set without the deleted users' rows, so no block keeps their
point id or statistics (the store's erasure rewrite then removes the old blocks' bytes).

Stores written before this module keep their statistics in the users' payloads (``engine.schema.KTH_SIM``...):
while no version point exists, every reader takes the payloads, and the first pass over the users table
writes the blocks (a full pass, ``matcher refresh``, also removes the payload copies). Once blocks exist,
payload values are never read.

:func:`stored` reads the small version point on every call, except on an embedded store whose META was not
written since the copy was made (``Store.write_count``: that store's only writer is this process), and
reloads or patches the copy when the version moved. A Qdrant server keeps the blocks like any other point, so
every process serving it sees the same statistics.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from engine.errors import InvalidInput
from engine.filters import Filter, MatchAny
from engine.schema import KTH_K, KTH_SIM, KTH_TOP, META
from engine.store.base import Store
from engine.store.meta_blocks import VersionedCopies, decode, encode, read_blocks, read_point, write_blocks, write_point

log = logging.getLogger(__name__)

STATS_VERSION_POINT_ID = "00000000-0000-4000-8000-00000000b1c3"
VERSION_KEY = "reciprocity_stats_version"
BLOCK_KEY = "reciprocity_stats_rows"
SET_KEY = "reciprocity_stats_set"
KIND_KEY = "kind"
KIND = "reciprocity_stats"
CHUNK_ROWS = 2048  # users per block (~190 KB of base64 with 8-entry windows)
PATCH_GENS = 64  # patches read on a cold load at most: the next small write then rewrites the set
PATCHED_SHARE = 0.25  # ... or once patches hold this share of the set's rows
_NS = uuid.UUID("1f3c0a52-7d4e-4b8f-a6c1-3e9d2b7f5a40")


@dataclass(frozen=True)
class Version:
    """What the version point names: the block set, its patch generation, its chunk count, how many rows the
    set holds after its patches, and how many rows those patches wrote."""

    set_id: str
    gen: int
    chunks: int
    rows: int
    patched: int

    @property
    def key(self) -> str:
        """One string naming this exact state (the refresh cache records it, ``engine.reciprocity.table``)."""
        return f"{self.set_id}/{self.gen}"


@dataclass
class Stats:
    """Every user's statistics as stored: row i = ``ids[i]`` (point ids as ASCII bytes, sorted). ``kth``
    (n,) float64, ``kth_k`` (n,) int64, ``top`` (n, W) float64 NaN-padded windows best first, ``top_len``
    (n,) int64 their lengths."""

    ids: np.ndarray
    kth: np.ndarray
    kth_k: np.ndarray
    top: np.ndarray
    top_len: np.ndarray
    version: Version | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of(
        cls, ids: Sequence[str] | np.ndarray, kth: np.ndarray, kth_k: np.ndarray, top: np.ndarray, top_len: np.ndarray
    ) -> Stats:
        """Rows in any order (ids unique) as a sorted copy; ``top`` (n, W) NaN-padded."""
        raw = _ascii(ids)
        order = np.argsort(raw, kind="stable")
        if len(raw) > 1 and np.any(raw[order][1:] == raw[order][:-1]):
            raise InvalidInput("reciprocity statistics: a point id appears twice")
        top = np.asarray(top, np.float64).reshape(len(raw), -1) if len(raw) else np.zeros((0, 8))
        return cls(
            raw[order], np.asarray(kth, np.float64)[order], np.asarray(kth_k, np.int64)[order],
            top[order], np.asarray(top_len, np.int64)[order],
        )  # fmt: skip

    def rows(self, point_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """(m,) int64: the row of each point id, -1 where it has no statistics."""
        q = _ascii(point_ids)
        if len(self.ids) == 0 or len(q) == 0:
            return np.full(len(q), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.ids, q), len(self.ids) - 1)
        return np.where(self.ids[pos] == q, pos, -1).astype(np.int64)

    def kth_of(self, point_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """(m,) float64: each point's ``kth_sim``, NaN where none is stored."""
        r = self.rows(point_ids)
        return np.where(r >= 0, self.kth[np.maximum(r, 0)] if len(self.kth) else np.nan, np.nan)

    def payload_of(self, point_id: str) -> dict[str, Any]:
        """One user's statistics under the payload keys (``{}`` when none are stored), for code that reads
        both layouts (``engine.reciprocity.stats.stored_stats``)."""
        r = int(self.rows([point_id])[0])
        if r < 0:
            return {}
        n = int(self.top_len[r])
        return {KTH_SIM: float(self.kth[r]), KTH_K: int(self.kth_k[r]), KTH_TOP: self.top[r, : max(n, 0)].tolist()}

    def updated(self, other: Stats) -> Stats:
        """These rows with ``other``'s rows written over them (and its new ids added)."""
        if len(other) == 0:
            return replace(self, version=None)
        keep = self.rows(other.ids) < 0  # other's ids not here yet
        r = self.rows(other.ids)
        width = max(self.top.shape[1], other.top.shape[1])
        top = _pad(self.top, width)
        kth, kk, tl = self.kth.copy(), self.kth_k.copy(), self.top_len.copy()
        hit = ~keep
        kth[r[hit]], kk[r[hit]], tl[r[hit]] = other.kth[hit], other.kth_k[hit], other.top_len[hit]
        top[r[hit]] = _pad(other.top[hit], width)
        return Stats.of(
            np.concatenate([self.ids, other.ids[keep]]),
            np.concatenate([kth, other.kth[keep]]), np.concatenate([kk, other.kth_k[keep]]),
            np.concatenate([top, _pad(other.top[keep], width)]), np.concatenate([tl, other.top_len[keep]]),
        )  # fmt: skip

    def without(self, point_ids: Sequence[str]) -> Stats:
        """These rows less those of ``point_ids`` (deleted users)."""
        drop = np.zeros(len(self), bool)
        r = self.rows(point_ids)
        drop[r[r >= 0]] = True
        k = ~drop
        return Stats(self.ids[k], self.kth[k], self.kth_k[k], self.top[k], self.top_len[k])


def _ascii(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    a = np.asarray(ids)
    if a.dtype.kind == "S":
        return a.reshape(-1)
    if a.dtype.kind == "U":
        try:
            return a.reshape(-1).astype("S")  # point ids are UUIDs: ASCII
        except UnicodeEncodeError:
            raise InvalidInput("reciprocity statistics: a point id is not ASCII") from None
    return np.array([str(x) for x in a.reshape(-1).tolist()], dtype="S") if a.size else np.zeros(0, "S36")


def _pad(top: np.ndarray, width: int) -> np.ndarray:
    if top.shape[1] >= width:
        return top.copy()
    return np.pad(top, ((0, 0), (0, width - top.shape[1])), constant_values=np.nan)


def _block(s: Stats, lo: int, hi: int) -> dict[str, Any]:
    lens = s.top_len[lo:hi]
    cols = np.arange(s.top.shape[1])
    flat = s.top[lo:hi][cols[None, :] < np.maximum(lens, 0)[:, None]]  # row-major: each row's window in turn
    return {
        "ids": encode(s.ids[lo:hi]),
        "kth": encode(s.kth[lo:hi]),
        "kth_k": encode(s.kth_k[lo:hi]),
        "top_len": encode(lens),
        "top": encode(np.asarray(flat, np.float64)),
    }


def _unblock(b: dict[str, Any]) -> Stats:
    try:
        what = "stored reciprocity statistics"
        ids, kth, kk = decode(b["ids"], what), decode(b["kth"], what), decode(b["kth_k"], what)
        lens, flat = decode(b["top_len"], what), decode(b["top"], what)
    except (KeyError, TypeError) as exc:
        raise InvalidInput(f"stored reciprocity statistics: malformed block ({exc})") from None
    n = len(ids)
    if not (len(kth) == len(kk) == len(lens) == n) or int(np.maximum(lens, 0).sum()) != len(flat):
        raise InvalidInput("stored reciprocity statistics: a block's arrays do not match")
    width = max(8, int(lens.max(initial=0)))
    top = np.full((n, width), np.nan)
    top[np.arange(width)[None, :] < np.maximum(lens, 0)[:, None]] = flat
    return Stats(ids, kth.astype(np.float64), kk.astype(np.int64), top, lens.astype(np.int64))


def _chunk_id(set_id: str, i: int) -> str:
    return str(uuid.uuid5(_NS, f"{set_id}/chunk/{i}"))


def _patch_id(set_id: str, gen: int) -> str:
    return str(uuid.uuid5(_NS, f"{set_id}/patch/{gen}"))


def read_version(store: Store) -> Version | None:
    """The stored version, or None: no blocks (statistics in the payloads, or none yet), or no META."""
    v = read_point(store, STATS_VERSION_POINT_ID, VERSION_KEY)
    if v is None or "set" not in v:
        return None
    return Version(str(v["set"]), int(v["gen"]), int(v["chunks"]), int(v["rows"]), int(v.get("patched", 0)))


def _write_version(store: Store, v: Version) -> None:
    value = {"set": v.set_id, "gen": v.gen, "chunks": v.chunks, "rows": v.rows, "patched": v.patched}
    write_point(store, STATS_VERSION_POINT_ID, VERSION_KEY, value)


def _upsert_blocks(store: Store, set_id: str, blocks: list[tuple[str, dict[str, Any]]]) -> None:
    write_blocks(store, blocks, key=BLOCK_KEY, extra={SET_KEY: set_id, KIND_KEY: KIND})


def write_set(store: Store, stats: Stats) -> Version:
    """Store ``stats`` as the whole statistics, under a new set id: its blocks, the version point, then
    every block of another set is deleted. Returns the new version; this process's copy becomes ``stats``.
    Raises ``StoreUnavailable`` from the store."""
    set_id = secrets.token_hex(8)
    n = len(stats)
    blocks = [(_chunk_id(set_id, i), _block(stats, lo, min(lo + CHUNK_ROWS, n))) for i, lo in
              enumerate(range(0, n, CHUNK_ROWS))]  # fmt: skip
    _upsert_blocks(store, set_id, blocks)
    version = Version(set_id, 0, len(blocks), n, 0)
    _write_version(store, version)
    # Every other set's blocks and patches (the previous one, and any a killed write left behind).
    store.delete_by_filter(
        META, Filter(must=(MatchAny.of(KIND_KEY, [KIND]),), must_not=(MatchAny.of(SET_KEY, [set_id]),))
    )
    _install(store, replace(stats, version=version))
    log.info("reciprocity statistics: %d users written as %d blocks", n, len(blocks))
    return version


def write_rows(store: Store, base: Stats, rows: Stats, *, erased: Sequence[str] = ()) -> Version:
    """Write ``rows`` over ``base`` (the copy :func:`stored` returned): one patch, or the whole set when
    patches have piled up, or when ``erased`` point ids must leave every block (an erasure). Returns the new
    version. Raises ``StoreUnavailable`` from the store."""
    merged = base.updated(rows)
    gone = [p for p in erased if base.rows([p])[0] >= 0]
    v = base.version
    if gone or v is None or v.gen + 1 > PATCH_GENS or v.patched + len(rows) > PATCHED_SHARE * max(v.rows, 1):
        return write_set(store, merged.without(gone) if gone else merged)
    if len(rows) == 0:
        return v
    gen = v.gen + 1
    _upsert_blocks(store, v.set_id, [(_patch_id(v.set_id, gen), _block(rows, 0, len(rows)))])
    version = Version(v.set_id, gen, v.chunks, len(merged), v.patched + len(rows))
    _write_version(store, version)
    _install(store, replace(merged, version=version))
    return version


def _blocks(store: Store, ids: list[str]) -> list[Stats] | None:
    """The blocks with these point ids, in that order; None if one is missing (a write replaced the set)."""
    got = read_blocks(store, ids, key=BLOCK_KEY)
    return None if got is None else [_unblock(b) for b in got]


def _load(store: Store, v: Version) -> Stats | None:
    chunks = _blocks(store, [_chunk_id(v.set_id, i) for i in range(v.chunks)])
    if chunks is None:
        return None
    width = max([8, *(c.top.shape[1] for c in chunks)])
    base = Stats(
        np.concatenate([c.ids for c in chunks]) if chunks else np.zeros(0, "S36"),
        np.concatenate([c.kth for c in chunks]) if chunks else np.zeros(0),
        np.concatenate([c.kth_k for c in chunks]) if chunks else np.zeros(0, np.int64),
        np.concatenate([_pad(c.top, width) for c in chunks]) if chunks else np.zeros((0, width)),
        np.concatenate([c.top_len for c in chunks]) if chunks else np.zeros(0, np.int64),
    )
    return _patched(store, base, v, 0)


def _patched(store: Store, base: Stats, v: Version, since: int) -> Stats | None:
    patches = _blocks(store, [_patch_id(v.set_id, g) for g in range(since + 1, v.gen + 1)])
    if patches is None:
        return None
    for p in patches:
        base = base.updated(p)
    return replace(base, version=v)


def _advance(store: Store, have: Stats, was: Version, v: Version) -> Stats | None:
    """``have`` (at ``was``) with the patches written since; None when the set changed (load it whole)."""
    if was.set_id != v.set_id or was.gen >= v.gen:
        return None
    return _patched(store, have, v, was.gen)


_COPIES: VersionedCopies[Version, Stats] = VersionedCopies(
    "reciprocity statistics", read_version, _load, _advance, strict=True
)


def _install(store: Store, stats: Stats) -> None:
    if stats.version is not None:
        _COPIES.install(store, stats, stats.version)


def stored(store: Store) -> Stats | None:
    """The stored statistics, from this process's copy when it is current (module docstring); None when no
    blocks are stored (a store whose statistics are in the payloads, or none yet). Raises
    ``StoreUnavailable`` from the store."""
    return _COPIES.get(store)


def kth_of_points(store: Store, point_ids: Sequence[str], payloads: Sequence[dict[str, Any]]) -> np.ndarray:
    """(m,) float64: each point's stored ``kth_sim`` (NaN where none), from the blocks where they exist, else
    from the users' payloads (a store written before them). What ``recommend()`` reads."""
    s = stored(store)
    if s is not None:
        return s.kth_of(point_ids)
    out = np.full(len(payloads), np.nan)
    for i, pl in enumerate(payloads):
        v = pl.get(KTH_SIM)
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[i] = float(v)
    return out


def forget(store: Store) -> None:
    """Drop this process's copy for ``store`` (tests; the version check makes it unnecessary otherwise)."""
    _COPIES.forget(store)


__all__ = [
    "STATS_VERSION_POINT_ID",
    "Stats",
    "Version",
    "forget",
    "kth_of_points",
    "read_version",
    "stored",
    "write_rows",
    "write_set",
]
