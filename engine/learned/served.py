"""The learned preference model as stored and as served: columnar blocks in ``matcher_meta``, and a
per-store in-process copy that can never be stale.

Stored (all in the ``META`` collection, 1-d placeholder vectors)::

    MODEL_POINT_ID          the shared part: weights, standardisation, cold-start row, popular users,
                            the reduced space and taste basis (base64 float64), the model's id
    chunk points            per-user rows of ``CHUNK_ROWS`` users each: point ids, user ids, the statistics
                            (float64, rounded to 5 decimals as the payloads were) and the 64-d taste
                            coordinates (float32), base64 (id: uuid5 of model id and chunk number)
    patch points            rows an incremental update (``engine.learned.rebuild.update_preferences``) rewrote, one
                            point per generation (id: uuid5 of model id and generation)
    MODEL_VERSION_POINT_ID  ``{"model": id, "gen": g}``: written last, so a reader that sees it finds
                            everything it names

A full rebuild writes a new model id (new chunks, shared part, then the version point) and deletes the
previous model's points; an incremental update writes one patch and bumps ``gen``. Reading ~100 KB blocks is
~100x faster than one payload per user, and so is writing them (one partial payload update per user cost
~1.4 ms on Edge, 140 s at 100,000 users).

``served_model(store)`` reads the small version point on every call (one ``retrieve``) and returns the
in-process copy when it names the same model and generation, applies the missing patches when only the
generation moved, and reloads everything when the model id changed: a copy older than what the store holds
is never served, whichever process wrote it.
"""

from __future__ import annotations

import base64
import logging
import threading
import uuid
import weakref
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np

from engine.errors import InvalidInput
from engine.filters import HasId
from engine.schema import META
from engine.store.base import Point, Store

log = logging.getLogger(__name__)

MODEL_POINT_ID = "00000000-0000-4000-8000-00000000a1a2"
MODEL_VERSION_POINT_ID = "00000000-0000-4000-8000-00000000a1a3"
MODEL_KEY = "preference_model"
VERSION_KEY = "preference_model_version"
BLOCK_KEY = "preference_model_rows"
CHUNK_ROWS = 2048  # users per stored block (~1.6 MB of base64 per block at rank 16, factors 16, 64-d tastes)
_NS = uuid.UUID("6a1d2f4e-8b3c-4c55-9e0a-2b7f1c3d4e5f")
_META_VECTOR = np.ones(1, dtype=np.float32)


def encode(a: np.ndarray) -> dict[str, Any]:
    """A numpy array as JSON: ``{"dtype", "shape", "b64"}`` (little-endian bytes)."""
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode(d: dict[str, Any]) -> np.ndarray:
    """``encode``'s inverse; raises ``InvalidInput`` on a malformed block."""
    try:
        raw = base64.b64decode(d["b64"])
        return np.frombuffer(raw, dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"stored preference model: malformed array block ({exc})") from None


def chunk_point_id(model_id: str, i: int) -> str:
    return str(uuid.uuid5(_NS, f"{model_id}/chunk/{i}"))


def patch_point_id(model_id: str, gen: int) -> str:
    return str(uuid.uuid5(_NS, f"{model_id}/patch/{gen}"))


# Stage 1's fresh leg names at most this many users by id (a HasId filter): the cold-start slots need a few
# per asker, and a filter of 100,000 ids would cost more than the query.
FRESH_IDS_MAX = 5000


@dataclass(frozen=True)
class Layout:
    """Column layout of a statistics row: pickiness, appeal, taste (rank), vproj (rank), viewer factors,
    item factors, n_given, n_received, likes_received."""

    rank: int
    factors: int

    @property
    def width(self) -> int:
        return 2 + 2 * self.rank + 2 * self.factors + 3

    def slices(self) -> dict[str, slice]:
        r, f = self.rank, self.factors
        return {
            "pickiness": slice(0, 1),
            "appeal": slice(1, 2),
            "taste": slice(2, 2 + r),
            "vproj": slice(2 + r, 2 + 2 * r),
            "viewer_f": slice(2 + 2 * r, 2 + 2 * r + f),
            "item_f": slice(2 + 2 * r + f, 2 + 2 * r + 2 * f),
            "n": slice(2 + 2 * r + 2 * f, 2 + 2 * r + 2 * f + 3),
        }


def stats_row(layout: Layout, side: dict[str, Any]) -> np.ndarray:
    """One (width,) float64 row from a ``SideStats``-like mapping (keys of ``Layout.slices``; ``n`` a triple)."""
    row = np.zeros(layout.width)
    for key, sl in layout.slices().items():
        row[sl] = np.asarray(side[key], np.float64).reshape(-1)
    return row


@dataclass
class ServedModel:
    """One model in memory: ``stats`` (N, width) float64, ``taste`` (N, r0) float32 taste coordinates in the
    reduced space, the rows' point ids and user ids, the shared part. Rows of users not in the model are
    served the ``cold`` row."""

    model_id: str
    gen: int
    erasures: int
    shared: dict[str, Any]
    layout: Layout
    point_ids: list[str]
    user_ids: list[str]
    stats: np.ndarray
    taste: np.ndarray
    space: np.ndarray  # (d, r0) float64: the reduced space the tastes are computed in
    basis: np.ndarray  # (r0, rank) float64: the taste basis of the last full rebuild
    cold: np.ndarray  # (width,) float64
    index: dict[str, int] = field(default_factory=dict)
    popular: HasId = field(default_factory=lambda: HasId(frozenset()))
    meta_writes: int | None = None  # the store's write count on META when this copy was last found current
    _fresh: tuple[tuple[int, int, int], HasId] | None = None  # (explore_min, gen, rows) -> fresh_ids' answer

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {p: i for i, p in enumerate(self.point_ids)}
        # Stage 1's second query is restricted to these: one condition object per model (a backend may keep
        # its translation of a condition it sees again).
        self.popular = HasId.of(str(p) for p in self.shared.get("popular_ids") or [])

    def fresh_ids(self, explore_min: int, limit: int = FRESH_IDS_MAX) -> HasId:
        """The users in the model with fewer than ``explore_min`` decisions received (cold start), as one
        condition for stage 1's fresh leg: at most ``limit`` of them, those with the fewest decisions first
        (stable). Kept until the copy changes (a patch, new rows) or ``explore_min`` does."""
        key = (int(explore_min), self.gen, len(self.point_ids))
        if self._fresh is not None and self._fresh[0] == key:
            return self._fresh[1]
        if len(self.stats) == 0:
            ids = HasId(frozenset())
        else:
            received = self.stats[:, self.layout.slices()["n"].start + 1]
            rows = np.flatnonzero(received < explore_min)
            rows = rows[np.argsort(received[rows], kind="stable")][:limit]
            ids = HasId.of(self.point_ids[int(i)] for i in rows)
        self._fresh = (key, ids)
        return ids

    def rows(self, point_ids: list[str]) -> np.ndarray:
        """(n,) row of each point id, -1 for users not in the model."""
        # ``map`` over the dict's C ``get``: no Python step per id (stage 2 asks for a few hundred per call).
        return np.array(list(map(self.index.get, point_ids, repeat(-1))), dtype=np.int64).reshape(len(point_ids))

    def side(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The statistics of ``rows`` (-1: the cold row) as ``engine.learned.model.pair_features`` takes them."""
        rows = np.asarray(rows, np.int64)
        block = self.stats[np.maximum(rows, 0)] if len(self.stats) else np.zeros((len(rows), self.layout.width))
        block[rows < 0] = self.cold
        out = {k: block[:, sl] for k, sl in self.layout.slices().items()}
        out["pickiness"] = out["pickiness"][:, 0]
        out["appeal"] = out["appeal"][:, 0]
        out["likes_received"] = out["n"][:, 2]
        return out

    def query_taste(self, row: int) -> np.ndarray | None:
        """The stage-1 query direction of ``row``: its taste in embedding space, (d,) float32 rounded to 5
        decimals as the old ``pref_taste`` payload held it (None for -1 or a zero taste)."""
        if row < 0:
            return None
        full = (self.taste[row].astype(np.float64) @ self.space.T).astype(np.float32)
        return np.round(full, 5)

    def apply(self, block: dict[str, Any]) -> None:
        """Overwrite (or append) the rows of one stored block (a chunk or a patch)."""
        pids = [str(p) for p in block["point_ids"]]
        uids = [str(u) for u in block["user_ids"]]
        stats, taste = decode(block["stats"]), decode(block["taste"])
        if stats.shape != (len(pids), self.layout.width) or taste.shape[0] != len(pids):
            raise InvalidInput("stored preference model: a block's shape does not match its ids")
        new = [i for i, p in enumerate(pids) if p not in self.index]
        if new:
            start = len(self.point_ids)
            for j, i in enumerate(new):
                self.index[pids[i]] = start + j
            self.point_ids.extend(pids[i] for i in new)
            self.user_ids.extend(uids[i] for i in new)
            self.stats = np.vstack([self.stats, np.zeros((len(new), self.layout.width))])
            self.taste = np.vstack([self.taste, np.zeros((len(new), self.taste.shape[1]), np.float32)])
        rows = np.array([self.index[p] for p in pids], np.int64)
        self.stats[rows] = stats
        self.taste[rows] = taste
        for p, u in zip(pids, uids, strict=True):
            self.user_ids[self.index[p]] = u


def block_payload(point_ids: list[str], user_ids: list[str], stats: np.ndarray, taste: np.ndarray) -> dict[str, Any]:
    st = np.round(np.asarray(stats, np.float64), 5)
    # Pickiness and appeal as Python's round() wrote them into the old payloads (np.round can differ by an ulp).
    st[:, :2] = np.array([[round(float(x), 5) for x in r] for r in np.asarray(stats, np.float64)[:, :2]]).reshape(-1, 2)
    return {
        "point_ids": list(point_ids),
        "user_ids": list(user_ids),
        "stats": encode(st),
        "taste": encode(np.asarray(taste, np.float32)),
    }


def read_version(store: Store) -> tuple[str, int, int] | None:
    """``(model id, generation, erasures)`` of the stored model, or None (no model, or a store without META).
    ``erasures`` counts the times rows were removed from stored blocks (a deleted user): a copy made before
    must be reloaded whole."""
    try:
        pts = store.retrieve(META, [MODEL_VERSION_POINT_ID])
    except InvalidInput:
        return None
    v = (pts[0].payload or {}).get(VERSION_KEY) if pts else None
    if not isinstance(v, dict) or "model" not in v:
        return None
    return str(v["model"]), int(v.get("gen", 0)), int(v.get("erasures", 0))


def write_version(store: Store, model_id: str, gen: int, erasures: int = 0) -> None:
    payload = {VERSION_KEY: {"model": model_id, "gen": gen, "erasures": erasures}}
    store.upsert(META, [Point(id=MODEL_VERSION_POINT_ID, vector=_META_VECTOR, payload=payload)])


def write_blocks(
    store: Store,
    points: list[tuple[str, dict[str, Any]]],
    *,
    key: str = BLOCK_KEY,
    extra: dict[str, Any] | None = None,
) -> None:
    """Upsert block points ``(point id, block)`` into META, a few at a time (bounded request size on a server):
    each point's payload is ``{key: block}`` plus ``extra``. Also ``engine.reciprocity.blocks``'s writer."""
    more = extra or {}
    for s in range(0, len(points), 4):
        store.upsert(
            META, [Point(id=pid, vector=_META_VECTOR, payload={key: b, **more}) for pid, b in points[s : s + 4]]
        )


def read_shared(store: Store) -> dict[str, Any] | None:
    try:
        pts = store.retrieve(META, [MODEL_POINT_ID])
    except InvalidInput:
        return None
    g = (pts[0].payload or {}).get(MODEL_KEY) if pts else None
    return g if isinstance(g, dict) and "weights" in g else None


def read_blocks(store: Store, ids: list[str], *, key: str = BLOCK_KEY) -> list[dict[str, Any]] | None:
    """The blocks (payload ``key``) of these META point ids, in that order; None if one is missing (a rebuild
    replaced them). Also ``engine.reciprocity.blocks``'s reader."""
    out: list[dict[str, Any]] = []
    for s in range(0, len(ids), 4):
        part = ids[s : s + 4]
        got = {p.id: (p.payload or {}).get(key) for p in store.retrieve(META, part)}
        for pid in part:
            b = got.get(pid)
            if not isinstance(b, dict):
                return None
            out.append(b)
    return out


def _cold(c: dict[str, Any]) -> dict[str, Any]:
    """The shared part's ``cold`` statistics (``SideStats.as_payload`` keys) under ``Layout`` names."""
    return {"pickiness": c["b"], "appeal": c["a"], "taste": c["t"], "vproj": c["vp"], "viewer_f": c["p"],
            "item_f": c["q"], "n": c.get("n") or [0, 0, 0]}  # fmt: skip


def _load(store: Store, model_id: str, gen: int, erasures: int) -> ServedModel | None:
    shared = read_shared(store)
    if shared is None or shared.get("model_id") != model_id:
        return None
    layout = Layout(int(shared["rank"]), int(shared["factors"]))
    space, basis = decode(shared["space"]), decode(shared["basis"])
    chunks = read_blocks(store, [chunk_point_id(model_id, i) for i in range(int(shared["chunks"]))])
    patches = read_blocks(store, [patch_point_id(model_id, g) for g in range(1, gen + 1)])
    if chunks is None or patches is None:
        return None
    sm = ServedModel(
        model_id, gen, erasures, shared, layout, [], [], np.zeros((0, layout.width)),
        np.zeros((0, space.shape[1]), np.float32), space, basis, stats_row(layout, _cold(shared["cold"])),
    )  # fmt: skip
    for b in (*chunks, *patches):
        sm.apply(b)
    return sm


_CACHE: weakref.WeakKeyDictionary[Store, ServedModel] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def served_model(store: Store) -> ServedModel | None:
    """The stored model, from this process's copy when it is current (see the module docstring); None when
    no model is stored. Raises ``StoreUnavailable``."""
    writes = store.write_count(META)
    with _LOCK:
        have = _CACHE.get(store)
    # An embedded store is written only through this object: no META write since the last check, no new version.
    if have is not None and writes is not None and have.meta_writes == writes:
        return have
    for _ in range(3):  # a rebuild replacing the model while we read it: read the new version again
        version = read_version(store)
        if version is None:
            with _LOCK:
                _CACHE.pop(store, None)
            return None
        model_id, gen, erasures = version
        with _LOCK:
            have = _CACHE.get(store)
        same = have is not None and have.model_id == model_id and have.erasures == erasures
        if have is not None and same and have.gen == gen:
            have.meta_writes = writes
            return have
        if have is not None and same and have.gen < gen:
            patches = read_blocks(store, [patch_point_id(model_id, g) for g in range(have.gen + 1, gen + 1)])
            if patches is not None:
                with _LOCK:
                    for b in patches:
                        have.apply(b)
                    have.gen = gen
                    have.meta_writes = writes
                return have
            continue
        sm = _load(store, model_id, gen, erasures)
        if sm is not None:
            sm.meta_writes = writes
            with _LOCK:
                _CACHE[store] = sm
            return sm
    log.warning("the stored preference model changed three times while it was read; serving photos this time")
    return None


def forget(store: Store) -> None:
    """Drop this process's copy for ``store`` (tests; the version check makes it unnecessary otherwise)."""
    with _LOCK:
        _CACHE.pop(store, None)


__all__ = [
    "FRESH_IDS_MAX",
    "MODEL_POINT_ID",
    "MODEL_VERSION_POINT_ID",
    "Layout",
    "ServedModel",
    "block_payload",
    "chunk_point_id",
    "patch_point_id",
    "read_blocks",
    "read_shared",
    "read_version",
    "served_model",
    "stats_row",
    "write_blocks",
    "write_version",
]
