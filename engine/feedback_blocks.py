"""The decision log's columns: a compact copy of the ``feedback`` collection in ``matcher_meta``, so the full model
rebuild reads a few large blocks instead of decoding every feedback point's payload (~15 us of CPU per decision
through the Edge bindings: 147 s of a 246 s rebuild at 6 M decisions, docs/benchmarks.md).

One row per feedback point (per ordered pair), in the order of its point id as a 128-bit number (the order a
scroll of the collection returns them in, so the fit gets the same arrays in the same order, bit for bit):

    hi, lo       uint64   the point id (``engine.feedback.feedback_point_id``, a uuid5) as two halves
    viewer, cand int32    codes into the set's dictionary of user ids
    decision     int8     position in ``engine.feedback.DECISIONS`` (blocks and reports kept: the copy is the log)
    ts           float64  seconds, as the payload holds them

Stored (``engine.store.meta_blocks``: blocks in META, a version point written last, a per-process copy)::

    chunk points   ``CHUNK_ROWS`` rows each, base64 columns, codes into the dictionary (id: uuid5 of set, i)
    dict points    the set's user ids, ``DICT_ROWS`` a point (JSON lists): code i is the i-th id
    patch points   the points one ``record_feedback`` call wrote (new pairs and replaced decisions), one per
                   generation, with user ids as strings (a writer needs no dictionary, nor the copy)
    LOG_VERSION_POINT_ID  ``{"set", "gen", "chunks", "dicts", "rows", "patched", "pending"}``

Kept exact: ``record_feedback`` marks the version ``pending`` before it writes the log and clears it with the
patch of exactly the points it wrote (a later patch row replaces an earlier row of the same pair, as the log's
upsert does). ``delete_feedback_of`` drops every block first, then deletes the user's events, then writes a
new set without their rows or their id: a kill in between leaves no blocks (never one holding the erased user).
The copy is *current* when its version is not pending and holds as many rows as the collection has points;
otherwise (a killed write, a writer that went around ``record_feedback``, a store written before this module)
:func:`log_rows` reads the payloads as before and writes a new set from them (``matcher rebuild-model`` repairs).
A new set is written when patches pile up too (``PATCH_GENS``, ``PATCHED_SHARE``).

Why the whole log rather than per-user sums: the fit needs the pairs (SVD factors of the interaction matrix,
Rocchio tastes in a space chosen at fit time, a held-out fifth of the pairs), so no per-user statistic can stand
in for it. (A little over 400 lines: the rows, their stored form and the write protocol are read together.)
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
from engine.schema import FEEDBACK, META
from engine.store.base import Store
from engine.store.meta_blocks import VersionedCopies, decode, encode, read_blocks, read_point, write_blocks, write_point

log = logging.getLogger(__name__)

LOG_VERSION_POINT_ID = "00000000-0000-4000-8000-00000000c1d4"
VERSION_KEY = "feedback_log_version"
BLOCK_KEY = "feedback_log_rows"
SET_KEY = "feedback_log_set"
KIND_KEY = "kind"  # the key engine.reciprocity.blocks marks its points with; another value
KIND = "feedback_log"
CHUNK_ROWS = 131_072  # rows per block: ~3.9 MB of base64
DICT_ROWS = 65_536  # user ids per dictionary point
PATCH_GENS = 1024  # patches read on a cold load at most: the next write then writes a new set
PATCHED_SHARE = 0.25  # ... or once patches hold this share of the set's rows
DECISION_CODES = ("like", "pass", "block", "report")  # engine.feedback.DECISIONS (a test checks they agree)
_LIKE, _PASS = 0, 1
OTHER = -1  # a payload's decision outside DECISION_CODES (never written by record_feedback)
_NS = uuid.UUID("3b0e6f1c-92d4-4a7b-b5e8-0c1f2d3e4a59")
_WHAT = "stored feedback log columns"


@dataclass(frozen=True)
class Version:
    set_id: str
    gen: int
    chunks: int
    dicts: int
    rows: int  # rows after the patches: the feedback collection's point count when current
    patched: int  # rows the patches hold
    pending: bool  # a write of the log began and has not finished (killed, or under way)


@dataclass
class LogRows:
    """The log as columns, sorted by point id (``hi``, ``lo``), one row per pair; ``users[code]`` is a user id.
    (n,) arrays each: ``hi``/``lo`` uint64, ``viewer``/``cand`` int32, ``decision`` int8, ``ts`` float64."""

    users: list[str]
    hi: np.ndarray
    lo: np.ndarray
    viewer: np.ndarray
    cand: np.ndarray
    decision: np.ndarray
    ts: np.ndarray
    version: Version | None = None

    def __len__(self) -> int:
        return len(self.hi)

    def arrays(self, index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What ``engine.feedback.decision_arrays`` returns for ``index``, in the same order: the likes and passes
        between users of ``index`` as ``(viewer, candidate)`` int64 indices, ``like`` bool, ``ts`` float64."""
        lut = np.array([index.get(u, -1) for u in self.users] + [-1], np.int64)
        v, c = lut[self.viewer], lut[self.cand]
        keep = ((self.decision == _LIKE) | (self.decision == _PASS)) & (v >= 0) & (c >= 0)
        return v[keep], c[keep], self.decision[keep] == _LIKE, self.ts[keep].astype(np.float64)

    def without(self, user_id: str) -> LogRows:
        """These rows less every row ``user_id`` gave or received, and their id gone from the dictionary."""
        code = {u: i for i, u in enumerate(self.users)}.get(user_id, -1)
        keep = (self.viewer != code) & (self.cand != code)
        return _compact(self.users, self.hi[keep], self.lo[keep], self.viewer[keep], self.cand[keep],
                        self.decision[keep], self.ts[keep])  # fmt: skip

    def updated(self, patch: LogRows) -> LogRows:
        """These rows with ``patch``'s written over them (a row replaces the row of the same point id; a later
        row of the patch replaces an earlier one), sorted again."""
        if len(patch) == 0:
            return replace(self, version=None)
        code = {u: i for i, u in enumerate(self.users)}
        users = list(self.users)
        for u in patch.users:
            if u not in code:
                code[u] = len(users)
                users.append(u)
        remap = np.array([code[u] for u in patch.users] + [0], np.int32)
        cat = [np.concatenate([a, b]) for a, b in ((self.hi, patch.hi), (self.lo, patch.lo),
               (self.viewer, remap[patch.viewer]), (self.cand, remap[patch.cand]),
               (self.decision, patch.decision), (self.ts, patch.ts))]  # fmt: skip
        order = _key_order(cat[0], cat[1])
        hi, lo = cat[0][order], cat[1][order]
        last = np.ones(len(hi), bool)  # the last row of each point id (stable order: the latest write)
        last[:-1] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
        sel = order[last]
        return LogRows(users, cat[0][sel], cat[1][sel], cat[2][sel], cat[3][sel], cat[4][sel], cat[5][sel])


_COLUMNS = ("hi", "lo", "viewer", "cand", "decision", "ts")


def _of(users: list[str], cols: Sequence[np.ndarray]) -> LogRows:
    """LogRows from the columns in ``_COLUMNS`` order."""
    hi, lo, viewer, cand, decision, ts = cols
    return LogRows(users, hi, lo, viewer, cand, decision, ts)


def _key_order(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """A stable order by (hi, lo). Sorting ``hi`` alone (timsort: near linear on a sorted set plus a patch) is
    the order unless two different ids share their high half, then both halves are sorted."""
    order = np.argsort(hi, kind="stable")
    h, lw = hi[order], lo[order]
    tie = (h[1:] == h[:-1]) & (lw[1:] != lw[:-1])
    return np.lexsort((lo, hi)) if tie.any() else order


def _compact(users: Sequence[str], hi: np.ndarray, lo: np.ndarray, viewer: np.ndarray, cand: np.ndarray,
             decision: np.ndarray, ts: np.ndarray) -> LogRows:  # fmt: skip
    """The rows with a dictionary of only the users they name (in first-code order)."""
    used = np.zeros(len(users) + 1, bool)
    used[viewer] = True
    used[cand] = True
    used = used[: len(users)]
    new = np.cumsum(used).astype(np.int32) - 1
    kept = [u for u, k in zip(users, used.tolist(), strict=True) if k]
    return LogRows(kept, hi, lo, new[viewer], new[cand], decision, ts)


def point_keys(point_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) uint64 halves of UUID point ids (canonical text, any case); raises ``InvalidInput`` otherwise."""
    if not point_ids:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    try:
        raw = bytes.fromhex("".join(point_ids).replace("-", ""))
    except ValueError:
        raise InvalidInput("feedback log: a point id is not a UUID") from None
    if len(raw) != 16 * len(point_ids):
        raise InvalidInput("feedback log: a point id is not a UUID")
    k = np.frombuffer(raw, ">u8").reshape(-1, 2).astype(np.uint64)
    return k[:, 0].copy(), k[:, 1].copy()


def rows_of(point_ids: Sequence[str], viewers: Sequence[str], cands: Sequence[str], decisions: Sequence[str],
            ts: Sequence[float]) -> LogRows:  # fmt: skip
    """Log rows from point ids and payload fields (sorted by id; of one id the last row is kept); a decision
    outside ``DECISION_CODES`` is kept as ``OTHER`` (no fit reads it). Raises ``InvalidInput`` for an id that
    is not a UUID."""
    code: dict[str, int] = {}
    users: list[str] = []

    def enc(u: str) -> int:
        c = code.get(u)
        if c is None:
            c = code[u] = len(users)
            users.append(u)
        return c

    dcode = {d: i for i, d in enumerate(DECISION_CODES)}
    dec = np.array([dcode.get(d, OTHER) for d in decisions], np.int8)
    hi, lo = point_keys(point_ids)
    v = np.array([enc(u) for u in viewers], np.int32)
    c = np.array([enc(u) for u in cands], np.int32)
    empty = _of(users, [np.zeros(0, t) for t in (np.uint64, np.uint64, np.int32, np.int32, np.int8, np.float64)])
    return empty.updated(LogRows(users, hi, lo, v, c, dec, np.asarray(ts, np.float64).reshape(-1)))


def scan_log(store: Store, *, progress: Any = None) -> LogRows | None:
    """Every point of the feedback collection read from its payloads (the slow path: ~15 us per point on Edge);
    None without the collection. ``progress``: a tqdm-like bar, ``update(n)`` per 8,192 points."""
    ids: list[str] = []
    vs: list[str] = []
    cs: list[str] = []
    ds: list[str] = []
    ts: list[float] = []
    page = 0
    try:
        for p in store.scroll_payload(FEEDBACK, ("viewer_id", "candidate_id", "decision", "ts"), batch_size=8192):
            pl = p.payload
            ids.append(p.id)
            vs.append(str(pl.get("viewer_id")))
            cs.append(str(pl.get("candidate_id")))
            ds.append(str(pl.get("decision")))
            ts.append(float(pl.get("ts") or 0.0))
            page += 1
            if progress is not None and page == 8192:
                progress.update(page)
                page = 0
    except InvalidInput:  # a store set up before the feedback collection existed
        return None
    if progress is not None and page:
        progress.update(page)
    return rows_of(ids, vs, cs, ds, ts)


# --- stored form ------------------------------------------------------------------------------------------


def _point_id(set_id: str, kind: str, i: int) -> str:
    return str(uuid.uuid5(_NS, f"{set_id}/{kind}/{i}"))


def read_version(store: Store) -> Version | None:
    """The stored version, or None (no columns stored, or no META)."""
    v = read_point(store, LOG_VERSION_POINT_ID, VERSION_KEY)
    if v is None or "set" not in v:
        return None
    return Version(str(v["set"]), int(v["gen"]), int(v["chunks"]), int(v["dicts"]), int(v["rows"]),
                   int(v.get("patched", 0)), bool(v.get("pending", False)))  # fmt: skip


def _write_version(store: Store, v: Version) -> None:
    write_point(store, LOG_VERSION_POINT_ID, VERSION_KEY, {"set": v.set_id, "gen": v.gen, "chunks": v.chunks,
                "dicts": v.dicts, "rows": v.rows, "patched": v.patched, "pending": v.pending})  # fmt: skip


def _upsert(store: Store, set_id: str, blocks: list[tuple[str, dict[str, Any]]]) -> None:
    write_blocks(store, blocks, key=BLOCK_KEY, extra={SET_KEY: set_id, KIND_KEY: KIND})


def _columns(r: LogRows, lo: int, hi: int) -> dict[str, Any]:
    return {k: encode(getattr(r, k)[lo:hi]) for k in _COLUMNS}


def _uncolumns(b: dict[str, Any], users: list[str]) -> LogRows:
    try:
        cols = [decode(b[k], _WHAT) for k in _COLUMNS]
    except (KeyError, TypeError) as exc:
        raise InvalidInput(f"{_WHAT}: malformed block ({exc})") from None
    if len({len(c) for c in cols}) != 1:
        raise InvalidInput(f"{_WHAT}: a block's columns differ in length")
    return _of(users, cols)


def write_set(store: Store, rows: LogRows) -> Version:
    """Store ``rows`` (sorted, one per point id) as the whole copy under a new set id: chunks, dictionary, the
    version point, then every block of another set is deleted. Returns the version. Raises
    ``StoreUnavailable``."""
    rows = _compact(rows.users, rows.hi, rows.lo, rows.viewer, rows.cand, rows.decision, rows.ts)
    set_id = secrets.token_hex(8)
    n = len(rows)
    starts = range(0, n, CHUNK_ROWS)
    _upsert(store, set_id, [(_point_id(set_id, "chunk", i), _columns(rows, s, s + CHUNK_ROWS))
                            for i, s in enumerate(starts)])  # fmt: skip
    dstarts = range(0, len(rows.users), DICT_ROWS)
    _upsert(store, set_id, [(_point_id(set_id, "dict", i), {"users": rows.users[s : s + DICT_ROWS]})
                            for i, s in enumerate(dstarts)])  # fmt: skip
    version = Version(set_id, 0, len(starts), len(dstarts), n, 0, False)
    _write_version(store, version)
    store.delete_by_filter(
        META, Filter(must=(MatchAny.of(KIND_KEY, [KIND]),), must_not=(MatchAny.of(SET_KEY, [set_id]),))
    )
    _COPIES.install(store, replace(rows, version=version), version)
    log.info("feedback log columns: %d rows written as %d blocks", n, len(starts))
    return version


def drop(store: Store) -> None:
    """Remove the version point and every block (an erasure begins here: no block outlives it)."""
    try:
        store.delete(META, [LOG_VERSION_POINT_ID])
        store.delete_by_filter(META, Filter(must=(MatchAny.of(KIND_KEY, [KIND]),)))
    except InvalidInput:  # no META
        return
    _COPIES.forget(store)


def load(store: Store, v: Version) -> LogRows | None:
    """The set ``v`` names read whole with its patches (no currency check); None when a block is missing."""
    dicts = read_blocks(store, [_point_id(v.set_id, "dict", i) for i in range(v.dicts)], key=BLOCK_KEY)
    chunks = read_blocks(store, [_point_id(v.set_id, "chunk", i) for i in range(v.chunks)], key=BLOCK_KEY)
    if dicts is None or chunks is None:
        return None
    users = [str(u) for d in dicts for u in d.get("users", [])]
    parts = [_uncolumns(b, users) for b in chunks]
    if parts:
        base = _of(users, [np.concatenate([getattr(p, k) for p in parts]) for k in _COLUMNS])
    else:
        base = rows_of([], [], [], [], [])
        base.users = users
    return _patched(store, base, v, 0)


def _patched(store: Store, base: LogRows, v: Version, since: int) -> LogRows | None:
    got = read_blocks(store, [_point_id(v.set_id, "patch", g) for g in range(since + 1, v.gen + 1)], key=BLOCK_KEY)
    if got is None:
        return None
    for b in got:
        ids = [str(u) for u in b.get("users", [])]
        base = base.updated(_uncolumns(b, ids))
    return replace(base, version=v)


def _advance(store: Store, have: LogRows, was: Version, v: Version) -> LogRows | None:
    if was.set_id != v.set_id or was.gen > v.gen:
        return None
    return _patched(store, have, v, was.gen)


_COPIES: VersionedCopies[Version, LogRows] = VersionedCopies(
    "feedback log columns", read_version, load, _advance, strict=True
)


def is_current(store: Store, v: Version | None, count: int | None = None) -> bool:
    """Whether ``v`` describes the log as it is: no write under way or killed, one row per feedback point
    (``count``: the feedback collection's point count when the caller has it, else counted here)."""
    if v is None or v.pending:
        return False
    try:
        return (store.count(FEEDBACK) if count is None else count) == v.rows
    except InvalidInput:
        return False


def stored_rows(store: Store, count: int | None = None) -> LogRows | None:
    """The stored copy when it is current (module docstring), else None. Counts the feedback collection (Edge
    counts exactly by walking it: ~60 ms at 200,000 points), so it is for a rebuild or an erasure, not for every
    feedback write. Raises ``StoreUnavailable``."""
    v = read_version(store)
    if not is_current(store, v, count):
        return None
    got = _COPIES.get(store)
    return got if got is not None and got.version == v else None  # else a writer moved it meanwhile


def log_rows(store: Store, *, progress: Any = None, count: int | None = None) -> LogRows | None:
    """The whole log as columns: the stored copy when current, else read from the payloads (``scan_log``) and
    stored as a new set. None without a feedback collection. ``progress`` is advanced per row either way;
    ``count``: the feedback collection's point count if the caller just took it (saves walking it again)."""
    got = stored_rows(store, count)
    if got is not None:
        if progress is not None:
            progress.update(len(got))
        return got
    scanned = scan_log(store, progress=progress)
    if scanned is None:
        return None
    log.info("feedback log columns: missing or stale; %d rows read from the payloads, stored again", len(scanned))
    write_set(store, scanned)
    return scanned


def begin_write(store: Store) -> Version | None:
    """Before ``record_feedback`` writes the log: the stored version, marked pending (a kill from here leaves
    the copy stale, repaired by the next rebuild); None when there is none, or it is pending already. The
    feedback collection is not counted here (a count walks it on Edge): a copy made stale by a writer around
    ``record_feedback`` is patched on, and found stale by the count of the next rebuild or erasure."""
    v = read_version(store)
    if v is None or v.pending:
        return None
    pending = replace(v, pending=True)
    _write_version(store, pending)
    return pending


def end_write(store: Store, v: Version, point_ids: list[str], payloads: list[dict[str, Any]], added: int) -> Version:
    """After the log write that ``begin_write`` announced: the written points (``added`` of them new pairs)
    as one patch, or a new set when patches have piled up. Returns the new version."""
    patch = rows_of(point_ids, [str(p["viewer_id"]) for p in payloads], [str(p["candidate_id"]) for p in payloads],
                    [str(p["decision"]) for p in payloads], [float(p.get("ts") or 0.0) for p in payloads])  # fmt: skip
    if v.gen + 1 > PATCH_GENS or v.patched + len(patch) > PATCHED_SHARE * max(v.rows, 1):
        base = _COPIES.get(store)
        if base is not None:
            return write_set(store, base.updated(patch))
    gen = v.gen + 1
    block = {**_columns(patch, 0, len(patch)), "users": patch.users}
    _upsert(store, v.set_id, [(_point_id(v.set_id, "patch", gen), block)])
    version = Version(v.set_id, gen, v.chunks, v.dicts, v.rows + added, v.patched + len(patch), False)
    _write_version(store, version)
    return version


def forget(store: Store) -> None:
    """Drop this process's copy for ``store`` (tests; the version check makes it unnecessary otherwise)."""
    _COPIES.forget(store)


__all__ = [
    "LOG_VERSION_POINT_ID",
    "LogRows",
    "Version",
    "begin_write",
    "drop",
    "end_write",
    "forget",
    "is_current",
    "load",
    "log_rows",
    "point_keys",
    "read_version",
    "rows_of",
    "scan_log",
    "stored_rows",
    "write_set",
]
