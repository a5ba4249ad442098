"""The store on Qdrant Edge (``qdrant-edge-py``): Qdrant's engine in this process, no server.

One ``EdgeShard`` per collection, each a folder under ``settings.store_path``::

    <store_path>/.matcher.lock          held while a process has the store open (see engine/store/lock.py)
    <store_path>/<prefix>photos/        EdgeShard (segments + WAL)
    <store_path>/<prefix>users/
    <store_path>/<prefix>matcher_meta/  one point: encoder id and dim

Edge builds HNSW only in ``optimize()`` (and only for segments above its indexing threshold; below it,
search is exact), so the ingestion calls ``optimize()`` after a bulk write. Upserts go through the shard's
WAL, so an acknowledged upsert survives the process being killed. The API is young (pinned in pyproject);
everything version-specific stays in this file, which is why it runs past 400 lines: the mapping of one
young API and the on-disk erasure that depends on its folder layout (rewrite a shard, swap it in), read
together when the pin moves. What both Qdrant backends do alike is in ``engine/store/qdrant_base.py``.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import struct
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from engine.errors import InvalidInput, StoreLocked, StoreUnavailable
from engine.filters import Filter, HasId, MatchAny, Range
from engine.schema import META, PHOTOS
from engine.settings import Settings
from engine.store.base import Hits, Point, Query, RecommendQuery, ScoredPoint
from engine.store.lock import FolderLock
from engine.store.meta import AUX_INDEXES, AUX_SEGMENT_KB, COLLECTION_INDEXES, META_DIM, META_POINT_ID, META_VECTOR
from engine.store.qdrant_base import (
    QdrantStore,
    default_vector,
    empty_filter_error,
    upsert_vectors,
    with_payload,
)

log = logging.getLogger(__name__)

_SCHEMA_TYPES: dict[str, qe.PayloadSchemaType] = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
}
_SCHEMA_NAMES: dict[Any, str] = {v: k for k, v in _SCHEMA_TYPES.items()}

# Substrings of the engine's error messages that mean "the disk failed us", worth a retry or an operator.
_IO_MARKERS = (
    "os error",
    "No space left",
    "Input/output",
    "I/O error",
    "Too many open files",
    "Permission denied",
)


def _uuid(point_id: str) -> uuid.UUID:
    """Our ids are UUID strings; Edge stores them as UUIDs (so they read back the same on every backend)."""
    try:
        return uuid.UUID(str(point_id))
    except ValueError:
        raise InvalidInput(f"point id {point_id!r} is not a UUID (see engine.schema)") from None


def _match_any(c: MatchAny) -> qe.MatchAny:
    strings = [v for v in c.values if isinstance(v, str)]
    if len(strings) == len(c.values):
        return qe.MatchAny(strings)
    ints = [v for v in c.values if isinstance(v, int) and not isinstance(v, bool)]
    if len(ints) == len(c.values):
        return qe.MatchAny(ints)
    raise InvalidInput(f"filter on {c.key!r}: match values must be all strings or all integers: {c.values!r}")


@functools.lru_cache(maxsize=32)
def _has_id(ids: frozenset[str]) -> qe.HasIdCondition:
    """The condition for a set of ids, kept for sets used again (recommend()'s 500 most appealing users, on
    every call): building 500 UUIDs per query cost more than the query's search (measured on Edge)."""
    return qe.HasIdCondition({_uuid(i) for i in ids})


def to_edge_filter(flt: Filter | None) -> qe.Filter | None:
    """Translate ``engine.filters.Filter`` to ``qdrant_edge.Filter`` (None for no filter)."""
    if flt is None or flt.is_empty():
        return None

    def cond(c: MatchAny | Range | HasId) -> Any:
        if isinstance(c, MatchAny):
            return qe.FieldCondition(c.key, match=_match_any(c))
        if isinstance(c, Range):
            # RangeFloat serves integer indexes too (Qdrant compares numerically).
            return qe.FieldCondition(c.key, range=qe.RangeFloat(gte=c.gte, lte=c.lte))
        if isinstance(c, HasId):
            return _has_id(c.ids)
        raise TypeError(f"unknown filter condition {c!r}")

    return qe.Filter(
        must=[cond(c) for c in flt.must] or None,
        must_not=[cond(c) for c in flt.must_not] or None,
    )


@functools.lru_cache(maxsize=8)
def _packer(dim: int) -> struct.Struct:
    return struct.Struct(f"{dim}f")


def _vector(v: Any) -> np.ndarray | None:
    """The bindings' vector (a list of Python floats) as float32.

    Packed through ``struct``: about 3x faster than ``np.asarray`` on a list of floats (measured 6 vs
    18 us per 512-d vector), and moving results into Python is most of a query's cost here."""
    v = default_vector(v)
    if v is None:
        return None
    if isinstance(v, list) and v:
        try:
            return np.frombuffer(_packer(len(v)).pack(*v), dtype=np.float32).copy()
        except struct.error:  # not all floats (never seen): the general path below
            pass
    return np.asarray(v, dtype=np.float32)


# qdrant-edge-py 0.9 formats a scored point in Rust as ``ScoredPoint(id="<uuid>", version=...``: the id's
# string is characters 16-52 of its repr, with no ``uuid.UUID`` built (see ``_hit_ids``).
_REPR_HEAD = 'ScoredPoint(id="'
_REPR_END = len(_REPR_HEAD) + 36  # the closing quote
_REPR_ID = itemgetter(slice(len(_REPR_HEAD), _REPR_END))
_SCORE = attrgetter("score")


def _hit_ids(points: Sequence[Any]) -> list[str]:
    """The bindings' scored points' ids as UUID strings, what ``str(p.id)`` gives.

    ``p.id`` makes the bindings build a ``uuid.UUID`` in Python (its ``__init__`` runs as bytecode) and ``str``
    formats it in Python again: ~5 us per point, more than the search for a 600-point answer (measured at
    10,000 users: 3.2 ms to convert 600 points against ~1.8 ms for the query). The repr is formatted in Rust;
    ``map`` over ``repr`` and an ``itemgetter`` keeps every step in C (0.9 ms for 600). Every point this store
    writes has a UUID id (``_uuid``), so one answer's reprs all have one shape: the first and last are checked
    (checking all 600 cost more than slicing them); where they are not of that shape (another version of the
    bindings) every id is read through ``p.id``."""
    reprs = list(map(repr, points))
    if not reprs:
        return []
    if all(r.startswith(_REPR_HEAD) and len(r) > _REPR_END and r[_REPR_END] == '"' for r in (reprs[0], reprs[-1])):
        return list(map(_REPR_ID, reprs))
    return [str(p.id) for p in points]


def _aux_optimizers() -> qe.EdgeOptimizersConfig:
    """The auxiliary collections' optimizer settings (``AUX_SEGMENT_KB``, engine/store/meta.py: segments sealed
    at ~1 M points never merge again); an HNSW graph is never built there (m=0, ``EdgeStore._config``), so the
    indexing threshold only decides when a segment is sealed."""
    return qe.EdgeOptimizersConfig(indexing_threshold=AUX_SEGMENT_KB, max_segment_size=AUX_SEGMENT_KB)


class EdgeStore(QdrantStore):
    """``Store`` on Qdrant Edge shards in one folder. Build it with ``EdgeStore.open(settings)``."""

    backend = "edge"
    _to_vector = staticmethod(_vector)

    def __init__(
        self, root: Path, lock: FolderLock, *, prefix: str = "", indexing_threshold_kb: int | None = None
    ) -> None:
        self.root = Path(root)
        self.where = f"the Edge store {self.root}"
        self.prefix = prefix
        self.indexing_threshold_kb = indexing_threshold_kb
        self._lock = lock
        self._shards: dict[str, qe.EdgeShard] = {}
        # Folders left half-made by a kill during create or --rebuild: not loaded; setup rebuilds them.
        self._half_made: set[str] = set()
        self._closed = False
        self._cache_root = self.root  # the refresh cache lives beside the collections

    @classmethod
    def open(cls, settings: Settings, *, indexing_threshold_kb: int | None = None) -> EdgeStore:
        """Open (or start) the Edge store in ``settings.store_path``, loading the collections already there.

        ``indexing_threshold_kb``: segments larger than this get HNSW in ``optimize()``; applies to
        collections created by this store's ``setup`` (None: Edge's default, about 10 MB of vectors).
        Raises ``StoreLocked`` (naming the folder) if another process has it open.
        """
        lock = FolderLock.acquire(settings.store_path)
        store = cls(
            settings.store_path,
            lock,
            prefix=settings.collection_prefix,
            indexing_threshold_kb=indexing_threshold_kb,
        )
        try:
            for c in (*COLLECTION_INDEXES, *AUX_INDEXES, META):
                store._settle_rewrite(c)
                if store._path(c).is_dir():
                    if store._is_half_made(c):
                        store._half_made.add(c)
                        log.warning(
                            "collection %r in %s is half-made (no config and no segments: a kill during "
                            "create or --rebuild); re-run the ingestion to rebuild it",
                            store.name(c),
                            store.root,
                        )
                        continue
                    store._load(c)
            if store._erasure_marker.exists():
                log.warning(
                    "an erasure in %s was not finished (killed after deleting, before rewriting the files); "
                    "finishing it now",
                    store.root,
                )
                store.finish_erasure()
        except BaseException:
            store.close()
            raise
        log.info("opened the Edge store %s (%s)", store.root, ", ".join(store._shards) or "empty")
        return store

    # -- helpers -------------------------------------------------------------------------------------------
    def _path(self, collection: str) -> Path:
        return self.root / self.name(collection)

    def _raise_mapped(self, exc: Exception, what: str, collection: str | None) -> None:
        """The engine's errors: a held WAL -> ``StoreLocked``, disk trouble -> ``StoreUnavailable``, a wrong
        vector size -> ``InvalidInput``; anything else (our bugs) passes through unchanged."""
        if isinstance(exc, OSError):
            raise StoreUnavailable(f"{what} failed on {self.where}: {exc}") from exc
        if type(exc) is not Exception:  # the bindings raise bare Exception; TypeError etc. are our bugs
            return
        msg = str(exc)
        folder = self._path(collection) if collection else self.root
        if "WouldBlock" in msg:
            raise StoreLocked(f"the store folder {folder} is in use by another process ({msg})") from exc
        if "dimension error" in msg:
            raise InvalidInput(f"{what} on {self.name(collection or '?')!r}: {msg}") from exc
        if any(m in msg for m in _IO_MARKERS):
            raise StoreUnavailable(f"{what} failed on {folder}: {msg}") from exc

    def _is_half_made(self, collection: str) -> bool:
        """True if the folder holds neither Edge's config file nor a segment (what ``EdgeShard.create``
        writes first): opening it would fail with \"edge config is not provided and no segments were loaded\"."""
        path = self._path(collection)
        segments = path / "segments"
        has_segments = segments.is_dir() and any(segments.iterdir())
        return not any(path.glob("edge_config*")) and not has_segments

    def _load(self, collection: str) -> qe.EdgeShard:
        # A store made before AUX_SEGMENT_KB gets its segment sizes on load (the other settings are kept as stored).
        config = self._config(collection, META_DIM) if collection in AUX_INDEXES else None
        with self._calling("load", collection):
            shard = qe.EdgeShard.load(str(self._path(collection)), config)
        self._shards[collection] = shard
        return shard

    def _shard(self, collection: str) -> qe.EdgeShard:
        self._check_open()
        shard = self._shards.get(collection)
        if shard is None and collection in self._half_made:
            raise StoreUnavailable(
                f"collection {self.name(collection)!r} in {self.where} is half-made (a kill during create or "
                f"--rebuild left {self._path(collection)} without config or segments); re-run the ingestion "
                "to rebuild it"
            )
        if shard is None:
            raise InvalidInput(
                f"collection {self.name(collection)!r} does not exist in {self.where}; run the ingestion first"
            )
        return shard

    def _config(self, collection: str, dim: int) -> qe.EdgeConfig:
        vectors = qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)
        optimizers = _aux_optimizers() if collection in AUX_INDEXES else None
        if self.indexing_threshold_kb is not None and collection != META and collection not in AUX_INDEXES:
            optimizers = qe.EdgeOptimizersConfig(indexing_threshold=self.indexing_threshold_kb)
        hnsw = None
        if collection == PHOTOS or collection in AUX_INDEXES:
            # Photos are only ever scored exactly, restricted by user_id (recommend()'s best-photo lookup):
            # an HNSW graph over them would never be used, and building it was most of optimize()'s time
            # (three photos per user). m=0 keeps the payload indexes and skips the graph. The auxiliary
            # collections (feedback) are only filtered, never searched.
            hnsw = qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000)
        return qe.EdgeConfig(vectors=vectors, optimizers=optimizers, hnsw_config=hnsw)

    def _create(self, collection: str, dim: int, indexes: dict[str, str]) -> None:
        path = self._path(collection)
        if path.exists():  # a half-made folder (crash during create) holds no data worth keeping
            shutil.rmtree(path)
        config = self._config(collection, dim)
        with self._calling("create", collection):
            shard = qe.EdgeShard.create(str(path), config)
            for field, kind in indexes.items():
                shard.update(qe.UpdateOperation.create_field_index(field, _SCHEMA_TYPES[kind]))
        self._shards[collection] = shard
        self._half_made.discard(collection)

    def _drop(self, collection: str) -> None:
        shard = self._shards.pop(collection, None)
        if shard is not None:
            shard.close()
        if self._path(collection).exists():
            shutil.rmtree(self._path(collection))

    # -- erasure: rewrite collections so deleted points leave no bytes behind -------------------------------
    @property
    def _erasure_marker(self) -> Path:
        return self.root / ".erasure-pending"

    def _rewrite_paths(self, collection: str) -> tuple[Path, Path]:
        return self.root / f".rewrite-{self.name(collection)}", self.root / f".old-{self.name(collection)}"

    def _settle_rewrite(self, collection: str) -> None:
        """Finish or undo a rewrite a kill interrupted (see ``_rewrite``): the new copy is renamed into place
        only once complete, and the old one (which still holds the erased bytes) is always removed."""
        new, old = self._rewrite_paths(collection)
        if old.exists():
            if not self._path(collection).exists():  # killed between the two renames: ``new`` is complete
                new.rename(self._path(collection))
            shutil.rmtree(old)
        if new.exists():  # killed while copying: the collection in place is intact; the copy is redone
            shutil.rmtree(new)

    def begin_erasure(self) -> None:
        # Names no user: only that a rewrite is owed. fsync'd, so it survives a power cut after the delete.
        with self._calling("mark erasure"):
            with open(self._erasure_marker, "w", encoding="utf-8") as fh:
                fh.write("rewrite every collection: points were deleted for an erasure request\n")
                fh.flush()
                os.fsync(fh.fileno())

    def finish_erasure(self, *, changed: bool = True) -> bool:
        """Rewrite every collection into a fresh shard (live points only), then swap it in: Edge keeps a
        deleted point's vector in its segment files, its id and payload in the WAL and payload indexes, and
        ``optimize()`` does not vacuum below 20 % deleted. Costs a copy of the store (see docs/reliability.md).
        ``changed=False`` only clears the marker."""
        if changed:
            for c in list(self._shards):
                self._rewrite(c)
        self._erasure_marker.unlink(missing_ok=True)
        return changed

    def _rewrite(self, collection: str) -> None:
        t0 = time.perf_counter()
        shard = self._shards[collection]
        indexes = self.payload_indexes(collection)
        dim = self._vector_size(collection)
        if dim < 0:
            dim = META_DIM if collection in (META, *AUX_INDEXES) else self._known_dim()
        new, old = self._rewrite_paths(collection)
        if new.exists():
            shutil.rmtree(new)
        with self._calling("rewrite", collection):
            copy = qe.EdgeShard.create(str(new), self._config(collection, dim))
            try:
                for field, kind in indexes.items():
                    if kind in _SCHEMA_TYPES:
                        copy.update(qe.UpdateOperation.create_field_index(field, _SCHEMA_TYPES[kind]))
                    else:  # never made by us; setup re-creates ours, a foreign one is worth a word
                        log.warning("rewrite of %s: payload index %r (%s) not copied", collection, field, kind)
                batch: list[Any] = []
                # The feedback log is sealed as it is copied (a segment per AUX_SEGMENT_KB of vectors), as
                # record_feedback's optimizes leave it: one optimize at the end would hold the whole copy in an
                # appendable segment (~1.2 KB per decision in memory, ~12 GB at 10 M) and then seal it as one.
                seal_every = AUX_SEGMENT_KB * 1024 // (4 * dim) if collection in AUX_INDEXES else 0
                unsealed = 0
                for p in self.scroll(collection, with_vectors=True):
                    if p.vector is None:
                        continue
                    batch.append(qe.Point(_uuid(p.id), np.asarray(p.vector, dtype=np.float32).tolist(), p.payload))
                    if len(batch) >= 1000:
                        copy.update(qe.UpdateOperation.upsert_points(batch))
                        unsealed, batch = unsealed + len(batch), []
                        if seal_every and unsealed >= seal_every:
                            copy.optimize()
                            unsealed = 0
                if batch:
                    copy.update(qe.UpdateOperation.upsert_points(batch))
                copy.optimize()
                copy.flush()
            finally:
                copy.close()
            shard.close()
            del self._shards[collection]
            path = self._path(collection)
            path.rename(old)
            new.rename(path)
            shutil.rmtree(old)
        self._load(collection)
        log.info("rewrote %s in %.2f s (erasure)", self.name(collection), time.perf_counter() - t0)

    def _known_dim(self) -> int:
        info = self.info()
        if info is None:
            raise StoreUnavailable(f"{self.where}: cannot rewrite an empty collection without the META record")
        return info.dim

    def _vector_size(self, collection: str) -> int:
        # Edge reports no vector config back, so read one stored vector (-1: the collection is empty).
        for p in self.scroll(collection, with_vectors=True, batch_size=1):
            return int(p.vector.shape[0]) if p.vector is not None else -1
        return -1

    # -- collections (setup and info: QdrantStore) -------------------------------------------------------
    def _exists(self, collection: str) -> bool:
        return collection in self._shards

    def _add_index(self, collection: str, field: str, kind: str) -> None:
        with self._calling("create_field_index", collection):
            self._shards[collection].update(qe.UpdateOperation.create_field_index(field, _SCHEMA_TYPES[kind]))

    def _write_meta(self, payload: dict[str, Any]) -> None:
        with self._calling("upsert", META):
            point = qe.Point(_uuid(META_POINT_ID), META_VECTOR.tolist(), payload)
            self._shards[META].update(qe.UpdateOperation.upsert_points([point]))

    def _read_meta(self) -> dict[str, Any] | None:
        if META not in self._shards:
            return None
        with self._calling("retrieve", META):
            recs = self._shards[META].retrieve([_uuid(META_POINT_ID)], True, False)
        return dict(recs[0].payload or {}) if recs else None

    def payload_indexes(self, collection: str) -> dict[str, str]:
        """Indexed payload fields of ``collection`` -> ``"keyword"`` / ``"integer"`` (others: Qdrant's)."""
        shard = self._shard(collection)
        with self._calling("info", collection):
            schema = shard.info().payload_schema
        return {k: _SCHEMA_NAMES.get(v.data_type, str(v.data_type)) for k, v in schema.items()}

    # -- points --------------------------------------------------------------------------------------------
    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        if not points:
            return
        self._before_write(collection, [p.id for p in points])
        shard = self._shard(collection)
        vectors = upsert_vectors(points)
        edge_points = [qe.Point(_uuid(p.id), v, p.payload) for p, v in zip(points, vectors, strict=True)]
        with self._calling("upsert", collection):
            # Returns once the WAL has it: acknowledged points survive a kill (flushed on close/optimize).
            shard.update(qe.UpdateOperation.upsert_points(edge_points))

    def set_payload(self, collection: str, changes: Mapping[str, Mapping[str, Any]]) -> None:
        """Partial payload updates (``Store.set_payload``): the points stay in their indexed segments, so no
        ``optimize()`` is needed after (an upsert would move them to an unindexed one)."""
        if not changes:
            return
        self._before_write(collection, list(changes))
        shard = self._shard(collection)
        # Each id is made a UUID once, and the stored ones are matched as UUIDs (no string built back per
        # id): a reciprocity pass writes tens of thousands of small updates, one operation each.
        uids: list[Any] = [_uuid(pid) for pid in changes]
        with self._calling("retrieve", collection):
            have = {r.id for r in shard.retrieve(uids, False, False)}
        with self._calling("set_payload", collection):
            for uid, fields in zip(uids, changes.values(), strict=True):
                if uid not in have:
                    continue  # not stored: skipped
                put = {k: v for k, v in fields.items() if v is not None}
                drop = [k for k, v in fields.items() if v is None]
                if put:
                    shard.update(qe.UpdateOperation.set_payload([uid], put))
                if drop:
                    shard.update(qe.UpdateOperation.delete_payload([uid], drop))

    def retrieve(self, collection: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[Point]:
        if not ids:
            return []
        shard = self._shard(collection)
        uuids: list[Any] = [_uuid(i) for i in ids]
        with self._calling("retrieve", collection):
            recs = shard.retrieve(uuids, True, with_vectors)
        return self._points(recs)

    def retrieve_vectors(self, collection: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """``Store.retrieve_vectors``: the payloads stay in the store (keys by the ids asked for: no UUID is
        turned back into a string)."""
        if not ids:
            return {}
        shard = self._shard(collection)
        by_uuid: dict[Any, str] = {_uuid(i): i for i in ids}
        uuids: list[Any] = list(by_uuid)
        with self._calling("retrieve", collection):
            recs = shard.retrieve(uuids, False, True)
        out: dict[str, np.ndarray] = {}
        for r in recs:
            v = _vector(r.vector)
            if v is not None:
                out[by_uuid.get(r.id) or str(r.id)] = v
        return out

    def _scroll_page(
        self, collection: str, flt: Filter | None, offset: Any, limit: int, with_vectors: bool
    ) -> tuple[list[Point], Any]:
        shard = self._shard(collection)
        request = qe.ScrollRequest(
            offset=offset, limit=limit, filter=to_edge_filter(flt), with_payload=True, with_vector=with_vectors
        )
        with self._calling("scroll", collection):
            recs, offset = shard.scroll(request)
        return self._points(recs), offset

    def scroll_payload(
        self,
        collection: str,
        keys: tuple[str, ...],
        flt: Filter | None = None,
        *,
        with_vectors: bool = False,
        with_ids: bool = True,
        batch_size: int = 8192,
    ) -> Iterator[Point]:
        """``Store.scroll_payload``: only ``keys`` cross the bindings (3x the points/s of ``scroll`` on
        feedback, measured)."""
        shard = self._shard(collection)
        ef, offset = to_edge_filter(flt), None
        while True:
            request = qe.ScrollRequest(
                offset=offset, limit=batch_size, filter=ef, with_payload=list(keys), with_vector=with_vectors
            )
            with self._calling("scroll", collection):
                recs, offset = shard.scroll(request)
            if with_ids:
                yield from self._points(recs)
            else:  # the bindings build a uuid.UUID per ``id`` access: a third of a bulk read's time
                vec = self._to_vector
                yield from (Point("", vec(r.vector) if with_vectors else None, r.payload or {}) for r in recs)
            if offset is None:
                return

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        self._before_write(collection, None)  # a deleted user's data must leave the refresh cache too
        shard = self._shard(collection)
        uuids: list[Any] = [_uuid(i) for i in ids]
        with self._calling("delete", collection):
            shard.update(qe.UpdateOperation.delete_points(uuids))

    def delete_by_filter(self, collection: str, flt: Filter) -> None:
        """Delete the points matching ``flt``; an empty filter is refused (``InvalidInput``), never "all"."""
        ef = to_edge_filter(flt)
        if ef is None:
            raise empty_filter_error()
        self._before_write(collection, None)
        shard = self._shard(collection)
        with self._calling("delete", collection):
            shard.update(qe.UpdateOperation.delete_points_by_filter(ef))

    def count(self, collection: str, flt: Filter | None = None) -> int:
        shard = self._shard(collection)
        ef = to_edge_filter(flt)
        with self._calling("count", collection):
            return int(shard.count(qe.CountRequest(exact=True, filter=ef)))

    @staticmethod
    def _request(q: Query) -> qe.QueryRequest:
        return qe.QueryRequest(
            limit=q.limit,
            query=qe.Query.Nearest(np.asarray(q.vector, dtype=np.float32).tolist()),
            filter=to_edge_filter(q.filter),
            with_payload=with_payload(q.with_payload),
            with_vector=q.with_vectors,
            params=qe.SearchParams(exact=True) if q.exact else None,
        )

    def query(self, collection: str, query: Query) -> list[ScoredPoint]:
        shard = self._shard(collection)
        with self._calling("query", collection):
            points = shard.query(self._request(query))
        return self._scored(points, query)

    def query_batch(self, collection: str, queries: Sequence[Query]) -> list[list[ScoredPoint]]:
        """All ``queries`` as one ``QueryBatchRequest`` (planned together: one pass over the segments)."""
        if not queries:
            return []
        shard = self._shard(collection)
        with self._calling("query", collection):
            results = shard.query_batch(qe.QueryBatchRequest([self._request(q) for q in queries]))
        return [self._scored(r, q) for r, q in zip(results, queries, strict=True)]

    def query_hits(self, collection: str, queries: Sequence[Query]) -> list[Hits]:
        """``Store.query_hits``: one query (several: one ``QueryBatchRequest``, as ``query_batch``), the ids read
        by ``_hit_ids`` and the scores by one ``np.fromiter``, no Python object per point besides the id."""
        if not queries:
            return []
        shard = self._shard(collection)
        requests = [self._request(replace(q, with_payload=False, with_vectors=False)) for q in queries]
        with self._calling("query", collection):
            if len(requests) == 1:
                results = [shard.query(requests[0])]
            else:
                results = shard.query_batch(qe.QueryBatchRequest(requests))
        return [Hits(_hit_ids(r), np.fromiter(map(_SCORE, r), np.float64, len(r))) for r in results]

    def _recommend_vectors(
        self, collection: str, pos: np.ndarray, neg: np.ndarray, query: RecommendQuery, flt: Filter
    ) -> list[ScoredPoint]:
        """``best_score`` through the shard's own ``RecommendBestScore``; ``average_vector`` is a query-side
        vector in Qdrant too (its collection layer averages, the segments see a nearest query)."""
        if query.strategy == "average_vector":
            return super()._recommend_vectors(collection, pos, neg, query, flt)
        shard = self._shard(collection)
        rq = qe.RecommendQuery(
            positives=[np.asarray(v, np.float32).tolist() for v in pos],
            negatives=[np.asarray(v, np.float32).tolist() for v in neg],
        )
        q = Query(vector=np.zeros(1, np.float32), limit=query.limit, filter=flt, with_payload=query.with_payload)
        request = qe.QueryRequest(
            limit=query.limit,
            query=qe.Query.RecommendBestScore(rq),
            filter=to_edge_filter(flt),
            with_payload=with_payload(query.with_payload),
            with_vector=False,
        )
        with self._calling("query", collection):
            points = shard.query(request)
        return self._scored(points, q)

    def optimize(self) -> None:
        """Merge segments and build HNSW (for segments over Edge's indexing threshold), then flush."""
        for c, shard in list(self._shards.items()):
            t0 = time.perf_counter()
            with self._calling("optimize", c):
                changed = shard.optimize()
                shard.flush()
            log.info("optimized %s in %.2f s (changed: %s)", self.name(c), time.perf_counter() - t0, changed)

    def flush(self) -> None:
        """Write every shard's pending changes into its segments (the WAL already makes them durable)."""
        for c, shard in self._shards.items():
            with self._calling("flush", c):
                shard.flush()

    def close(self) -> None:
        """Flush and close every shard, then release the folder (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            for c, shard in self._shards.items():
                try:
                    shard.flush()
                except Exception:  # keep closing the others; the WAL still holds what was acknowledged
                    log.exception("flushing %s on close failed", self.name(c))
                shard.close()
            self._shards.clear()
        finally:
            self._lock.release()
