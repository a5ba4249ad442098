"""What the two Qdrant backends (``engine.store.edge``, ``engine.store.client``) do the same way.

``setup`` (create what is missing, add missing payload indexes, refuse another encoder's vectors, record the
encoder in META), ``info``, ``scroll``'s paging, ``set_payload``'s split into keys to set and keys to drop,
the checks on points to upsert and on filters to delete by, and turning records into ``Point``s. Each backend
supplies the few primitives below (create/drop a collection, read a vector size, write and read META, one
page of a scroll), in its own API.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InvalidInput, StoreUnavailable
from engine.filters import Filter
from engine.schema import META, USERS
from engine.store import cache
from engine.store.base import Point, Query, ScoredPoint, Store, StoreInfo
from engine.store.meta import AUX_INDEXES, COLLECTION_INDEXES, META_DIM, check_encoder, info_from_payload, meta_payload

log = logging.getLogger(__name__)

# (point id, keys to set, keys to delete) for one point of a ``set_payload`` call.
PayloadChange = tuple[str, dict[str, Any], list[str]]


def with_payload(value: bool | tuple[str, ...]) -> bool | list[str]:
    """A ``Query.with_payload`` value as both APIs take it (a list of keys, or a flag)."""
    return list(value) if isinstance(value, tuple) else bool(value)


def default_vector(v: Any) -> Any:
    """The unnamed vector of a record's ``vector`` (named vectors: we only use the default one), or None."""
    if isinstance(v, dict):
        return v.get("", next(iter(v.values()), None))
    return v


def float32_vector(v: Any) -> np.ndarray | None:
    """A record's vector as float32 (None when it has none)."""
    v = default_vector(v)
    return None if v is None else np.asarray(v, dtype=np.float32)


def payload_changes(changes: Mapping[str, Mapping[str, Any]], stored: Iterable[str]) -> list[PayloadChange]:
    """``Store.set_payload``'s ``changes`` for the ids in ``stored`` (others are skipped), split per point into
    keys to set and keys to delete (a None value)."""
    have = set(stored)
    out: list[PayloadChange] = []
    for pid, fields in changes.items():
        if pid in have:
            put = {k: v for k, v in fields.items() if v is not None}
            out.append((pid, put, [k for k, v in fields.items() if v is None]))
    return out


def upsert_vectors(points: Sequence[Point]) -> list[list[float]]:
    """Each point's vector as a list of floats; raises ``InvalidInput`` naming a point without one."""
    out = []
    for p in points:
        if p.vector is None:
            raise InvalidInput(f"point {p.id}: no vector to upsert")
        out.append(np.asarray(p.vector, dtype=np.float32).tolist())
    return out


def empty_filter_error() -> InvalidInput:
    """What ``delete_by_filter`` raises for an empty filter (it would delete every point)."""
    return InvalidInput("delete_by_filter: the filter is empty (refusing to delete every point)")


# ``_calling`` names of backend calls that change a collection (``Store.write_count`` counts them).
_WRITES = frozenset({"upsert", "set_payload", "delete", "create", "create_collection", "delete_collection", "rewrite"})


class QdrantStore(Store):
    """``Store`` parts shared by the Qdrant backends; a subclass supplies the primitives marked abstract."""

    prefix: str = ""
    where: str  # for messages: the folder, or the redacted URL
    _closed: bool = False
    _cache_root: Path | None = None  # the store's folder (embedded backends); None: no refresh cache
    _token_known: bool = False  # whether ``_token`` holds META's cache token (read once, then kept)
    _token: str | None = None

    def name(self, collection: str) -> str:
        """The backend's name of a logical collection (``settings.collection_prefix`` + name)."""
        return f"{self.prefix}{collection}"

    @staticmethod
    def _to_vector(v: Any) -> np.ndarray | None:
        return float32_vector(v)

    def _points(self, records: Iterable[Any]) -> list[Point]:
        """The backend's records (``id``, ``vector``, ``payload``) as ``Point``s."""
        vec = self._to_vector
        return [Point(id=str(r.id), vector=vec(r.vector), payload=dict(r.payload or {})) for r in records]

    def _scored(self, points: Sequence[Any], q: Query) -> list[ScoredPoint]:
        # Moving results into Python is most of a query's cost on Edge: one tight loop per shape of request.
        if not q.with_payload and not q.with_vectors:
            return [ScoredPoint(str(p.id), float(p.score)) for p in points]
        vec = self._to_vector
        return [
            ScoredPoint(
                id=str(p.id),
                score=float(p.score),
                payload=dict(p.payload or {}) if q.with_payload else None,
                vector=vec(p.vector) if q.with_vectors else None,
            )
            for p in points
        ]

    @contextmanager
    def _calling(self, what: str, collection: str | None = None) -> Iterator[None]:
        """Refuse calls on a closed store; around one backend call, turn the backend's errors into ours
        (``_raise_mapped``); our own errors and anything unmapped (our bugs) pass through unchanged."""
        self._check_open()
        try:
            yield
        except (StoreUnavailable, InvalidInput):
            raise
        except Exception as exc:
            self._raise_mapped(exc, what, collection)
            raise
        finally:
            if what in _WRITES and collection is not None:
                self._wrote(collection)

    def _wrote(self, collection: str) -> None:
        """Count one write call to ``collection`` (after it: a reader that saw the old count re-reads)."""
        counts = self.__dict__.setdefault("_write_counts", {})
        counts[collection] = counts.get(collection, 0) + 1

    def write_count(self, collection: str) -> int | None:
        if self.backend == "server":  # other processes may write: nothing this process holds can be trusted
            return None
        return int(self.__dict__.get("_write_counts", {}).get(collection, 0))

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"{self.where} is closed")

    # -- primitives ----------------------------------------------------------------------------------------
    @abstractmethod
    def _raise_mapped(self, exc: Exception, what: str, collection: str | None) -> None:
        """Raise the ``StoreUnavailable`` / ``StoreLocked`` / ``InvalidInput`` that ``exc`` (raised by the
        backend during ``what`` on ``collection``) means, or return to let it pass unchanged."""

    @abstractmethod
    def _exists(self, collection: str) -> bool: ...

    @abstractmethod
    def _drop(self, collection: str) -> None:
        """Delete ``collection`` and its points if it exists."""

    @abstractmethod
    def _vector_size(self, collection: str) -> int:
        """The vector size of an existing collection (-1 when the backend cannot tell: empty)."""

    @abstractmethod
    def _create(self, collection: str, dim: int, indexes: dict[str, str]) -> None:
        """Create ``collection`` (cosine, ``dim``) with these payload indexes."""

    @abstractmethod
    def _add_index(self, collection: str, field: str, kind: str) -> None: ...

    @abstractmethod
    def payload_indexes(self, collection: str) -> dict[str, str]:
        """Indexed payload fields of ``collection`` -> ``"keyword"`` / ``"integer"``."""

    @abstractmethod
    def _write_meta(self, payload: dict[str, Any]) -> None: ...

    @abstractmethod
    def _read_meta(self) -> dict[str, Any] | None:
        """The META point's payload, or None when there is no META collection or point."""

    @abstractmethod
    def _scroll_page(
        self, collection: str, flt: Filter | None, offset: Any, limit: int, with_vectors: bool
    ) -> tuple[list[Point], Any]:
        """One page of a scroll and the offset of the next (None after the last)."""

    # -- shared behaviour ----------------------------------------------------------------------------------
    def setup(self, encoder_id: str, dim: int, *, rebuild: bool = False) -> None:
        if dim < 1:
            raise InvalidInput(f"dim: must be positive, got {dim}")
        self._check_open()
        # The refresh cache survives a setup only when the users collection does (engine/store/cache.py).
        keep = self.cache_token() if not rebuild and self._exists(USERS) else None
        if keep is None:
            self._drop_cache()
        if rebuild:
            for c in (*COLLECTION_INDEXES, META):
                self._drop(c)
        else:
            check_encoder(self.info(), encoder_id, dim, self.where)
            # A store without META (made by hand, or META lost) must still not mix dimensions.
            for c in COLLECTION_INDEXES:
                if self._exists(c):
                    size = self._vector_size(c)
                    if size not in (-1, dim):
                        check_encoder(StoreInfo(encoder_id="<unrecorded>", dim=size), encoder_id, dim, self.where)
        for c, indexes in COLLECTION_INDEXES.items():
            self._ensure(c, dim, indexes)
        for c, indexes in AUX_INDEXES.items():
            self._ensure(c, META_DIM, indexes)
        self._ensure(META, META_DIM, {})
        payload = meta_payload(encoder_id, dim)
        if keep is not None:
            payload[cache.CACHE_KEY] = keep
        self._write_meta(payload)
        self._token, self._token_known = keep, True
        for c in (*COLLECTION_INDEXES, *AUX_INDEXES, META):  # collections dropped or made: caches re-read
            self._wrote(c)
        log.info("store ready on %s: encoder %s, dim %d", self.where, encoder_id, dim)

    def _ensure(self, collection: str, dim: int, indexes: dict[str, str]) -> None:
        """Create ``collection`` if missing, else add the payload indexes it lacks."""
        if not self._exists(collection):
            self._create(collection, dim, indexes)
            return
        have = self.payload_indexes(collection)
        for field, kind in indexes.items():
            if have.get(field) != kind:
                self._add_index(collection, field, kind)

    # -- the refresh cache's bookkeeping (engine/store/cache.py) -------------------------------------------
    def cache_folder(self) -> Path | None:
        if self._cache_root is None:
            return None
        return self._cache_root / f"{self.prefix}{cache.CACHE_FOLDER}"

    def cache_token(self) -> str | None:
        if self._cache_root is None:
            return None
        if not self._token_known:
            token = (self._read_meta() or {}).get(cache.CACHE_KEY)
            self._token, self._token_known = (token if isinstance(token, str) and token else None), True
        return self._token

    def set_cache_token(self, token: str | None) -> None:
        folder = self.cache_folder()
        if folder is None:
            return
        if token is None:
            self._drop_cache()
            return
        if not self._exists(META):
            raise InvalidInput(f"{self.where} has no META collection: run setup before recording a cache")
        payload = self._read_meta() or {}
        payload[cache.CACHE_KEY] = token
        self._write_meta(payload)
        self._token, self._token_known = token, True
        cache.remove_files(folder, keep=token)  # older caches (and their journals) are of no use now

    def _drop_cache(self) -> None:
        """Clear META's cache token (first: a kill after it leaves nothing trusted), then remove the files."""
        folder = self.cache_folder()
        if folder is None:
            return
        if self.cache_token() is not None and self._exists(META):
            payload = self._read_meta() or {}
            payload.pop(cache.CACHE_KEY, None)
            self._write_meta(payload)
        self._token, self._token_known = None, True
        cache.remove_files(folder)

    def _before_write(self, collection: str, ids: Sequence[str] | None) -> None:
        """Call before any write to ``collection``: the users' ids go to the cache's journal; ``ids=None``
        (a deletion, or a write whose points cannot be listed) drops the cache."""
        if collection != USERS or self._cache_root is None:
            return
        token = self.cache_token()
        if token is None:
            return
        folder = self.cache_folder()
        if ids is None or folder is None or not cache.append_journal(folder, token, ids):
            self._drop_cache()

    def info(self) -> StoreInfo | None:
        return info_from_payload(self._read_meta())

    def scroll(
        self,
        collection: str,
        flt: Filter | None = None,
        *,
        with_vectors: bool = False,
        batch_size: int = 1000,
    ) -> Iterator[Point]:
        offset: Any = None
        while True:
            points, offset = self._scroll_page(collection, flt, offset, batch_size, with_vectors)
            yield from points
            if offset is None:
                return
