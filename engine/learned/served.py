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

``served_model(store)`` (``engine.store.meta_blocks.VersionedCopies``, the per-process copy the reciprocity
statistics and the log's columns use too) reads the small version point on every call (one ``retrieve``; none
on an embedded store whose META was not written since) and returns the
in-process copy when it names the same model and generation, applies the missing patches when only the
generation moved, and reloads everything when the model id changed: a copy older than what the store holds
is never served, whichever process wrote it.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np

from engine.errors import InvalidInput
from engine.filters import HasId
from engine.store.base import Store
from engine.store.meta_blocks import VersionedCopies, decode, encode, read_point, write_point
from engine.store.meta_blocks import read_blocks as _read_blocks
from engine.store.meta_blocks import write_blocks as _write_blocks

log = logging.getLogger(__name__)

MODEL_POINT_ID = "00000000-0000-4000-8000-00000000a1a2"
MODEL_VERSION_POINT_ID = "00000000-0000-4000-8000-00000000a1a3"
MODEL_KEY = "preference_model"
VERSION_KEY = "preference_model_version"
BLOCK_KEY = "preference_model_rows"
CHUNK_ROWS = 2048  # users per stored block (~1.6 MB of base64 per block at rank 16, factors 16, 64-d tastes)
_NS = uuid.UUID("6a1d2f4e-8b3c-4c55-9e0a-2b7f1c3d4e5f")


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
    item factors, n_given, n_received, likes_received, twin taste (``twin`` columns: ``factors``, or 0 in a
    model stored before twin tastes, whose rows end at likes_received)."""

    rank: int
    factors: int
    twin: int = 0

    @property
    def width(self) -> int:
        return 2 + 2 * self.rank + 2 * self.factors + 3 + self.twin

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
            "twin_f": slice(2 + 2 * r + 2 * f + 3, 2 + 2 * r + 2 * f + 3 + self.twin),
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
    v = read_point(store, MODEL_VERSION_POINT_ID, VERSION_KEY)
    if v is None or "model" not in v:
        return None
    return str(v["model"]), int(v.get("gen", 0)), int(v.get("erasures", 0))


def write_version(store: Store, model_id: str, gen: int, erasures: int = 0) -> None:
    write_point(store, MODEL_VERSION_POINT_ID, VERSION_KEY, {"model": model_id, "gen": gen, "erasures": erasures})


def write_blocks(
    store: Store,
    points: list[tuple[str, dict[str, Any]]],
    *,
    key: str = BLOCK_KEY,
    extra: dict[str, Any] | None = None,
) -> None:
    """Upsert block points ``(point id, block)`` into META (``engine.store.meta_blocks.write_blocks``, the
    model's payload key by default)."""
    _write_blocks(store, points, key=key, extra=extra)


def read_shared(store: Store) -> dict[str, Any] | None:
    g = read_point(store, MODEL_POINT_ID, MODEL_KEY)
    return g if g is not None and "weights" in g else None


def read_blocks(store: Store, ids: list[str], *, key: str = BLOCK_KEY) -> list[dict[str, Any]] | None:
    """The blocks of these META point ids, in that order; None if one is missing (a rebuild replaced them)."""
    return _read_blocks(store, ids, key=key)


def _cold(c: dict[str, Any]) -> dict[str, Any]:
    """The shared part's ``cold`` statistics (``SideStats.as_payload`` keys) under ``Layout`` names."""
    return {"pickiness": c["b"], "appeal": c["a"], "taste": c["t"], "vproj": c["vp"], "viewer_f": c["p"],
            "item_f": c["q"], "n": c.get("n") or [0, 0, 0], "twin_f": c.get("tp") or []}  # fmt: skip


def _load(store: Store, model_id: str, gen: int, erasures: int) -> ServedModel | None:
    shared = read_shared(store)
    if shared is None or shared.get("model_id") != model_id:
        return None
    layout = Layout(int(shared["rank"]), int(shared["factors"]), int(shared.get("twin", 0)))
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


def _load_version(store: Store, version: tuple[str, int, int]) -> ServedModel | None:
    return _load(store, *version)


_PATCH_LOCK = threading.Lock()


def _advance(
    store: Store, have: ServedModel, was: tuple[str, int, int], version: tuple[str, int, int]
) -> ServedModel | None:
    """``have`` with the patches of the generations since ``was`` applied in place; None when the model id or
    the erasures moved (reload whole) or a patch is missing."""
    model_id, gen, erasures = version
    if was[0] != model_id or was[2] != erasures or was[1] >= gen:
        return None
    patches = read_blocks(store, [patch_point_id(model_id, g) for g in range(was[1] + 1, gen + 1)])
    if patches is None:
        return None
    with _PATCH_LOCK:
        for b in patches:
            have.apply(b)
        have.gen = gen
    return have


_COPIES: VersionedCopies[tuple[str, int, int], ServedModel] = VersionedCopies(
    "preference model", read_version, _load_version, _advance, strict=False
)


def served_model(store: Store) -> ServedModel | None:
    """The stored model, from this process's copy when it is current (see the module docstring); None when
    no model is stored. Raises ``StoreUnavailable``."""
    return _COPIES.get(store)


def forget(store: Store) -> None:
    """Drop this process's copy for ``store`` (tests; the version check makes it unnecessary otherwise)."""
    _COPIES.forget(store)


__all__ = [
    "FRESH_IDS_MAX",
    "MODEL_POINT_ID",
    "MODEL_VERSION_POINT_ID",
    "Layout",
    "ServedModel",
    "block_payload",
    "chunk_point_id",
    "decode",
    "encode",
    "patch_point_id",
    "read_blocks",
    "read_shared",
    "read_version",
    "served_model",
    "stats_row",
    "write_blocks",
    "write_version",
]
