"""The store seam: one abstract surface over Qdrant, with an implementation per backend.

Vectors cross this seam as ``numpy.float32`` arrays, L2-normalised by whoever made them; collections use
cosine distance, so a score is a cosine similarity in [-1, 1]. Point ids are UUID strings
(see ``engine.schema``). Every method may raise ``StoreUnavailable``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from engine.errors import InvalidInput
from engine.filters import Filter, HasId


@dataclass
class Point:
    id: str
    vector: np.ndarray | None  # float32, shape (dim,)
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScoredPoint:
    id: str
    score: float  # cosine similarity
    payload: dict[str, Any] | None = None
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class Hits:
    """A query's answer without payloads or vectors (``Store.query_hits``): ``ids`` the point ids best first,
    ``scores`` (n,) float64 their cosine similarities, as ``float(ScoredPoint.score)`` would give them."""

    ids: list[str]
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Query:
    """One nearest-neighbour query. ``with_payload`` may name the only payload keys to return."""

    vector: np.ndarray
    limit: int
    filter: Filter | None = None
    with_payload: bool | tuple[str, ...] = True
    with_vectors: bool = False
    exact: bool = False  # brute force instead of the HNSW index (tests, recall checks)


RECOMMEND_STRATEGIES: tuple[str, ...] = ("average_vector", "best_score")


@dataclass(frozen=True)
class RecommendQuery:
    """One query of Qdrant's Recommendation API: points like ``positive`` and unlike ``negative`` (point ids).

    ``average_vector``: a nearest-neighbour search for ``avg(positive) + (avg(positive) - avg(negative))``.
    ``best_score``: each candidate scored against every example; it ranks by its best positive similarity
    when that beats its best negative one, else below all those, by minus its best negative similarity
    (Qdrant's rule; the score itself is squashed by a sigmoid, so only the order is portable).
    At least one positive is needed for ``average_vector``; ``best_score`` accepts negatives alone.
    """

    positive: tuple[str, ...]
    negative: tuple[str, ...]
    limit: int
    strategy: str = "average_vector"
    filter: Filter | None = None
    with_payload: bool | tuple[str, ...] = True


def average_vector_query(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Qdrant's ``average_vector`` query vector: ``2 · avg(positive) - avg(negative)``; (p, d), (m, d) -> (d,)."""
    avg_pos = np.asarray(positive, dtype=np.float32).mean(axis=0)
    if len(negative) == 0:
        return avg_pos.astype(np.float32)
    return (2.0 * avg_pos - np.asarray(negative, dtype=np.float32).mean(axis=0)).astype(np.float32)


@dataclass(frozen=True)
class StoreInfo:
    """What the collections hold: which encoder made the vectors, and their dimension."""

    encoder_id: str
    dim: int


class Store(ABC):
    """Abstract store. Collections are named by ``engine.schema`` constants (the backend adds any prefix)."""

    backend: str = "abstract"

    # -- collections ---------------------------------------------------------------------------------------
    @abstractmethod
    def setup(self, encoder_id: str, dim: int, *, rebuild: bool = False) -> None:
        """Create ``photos`` and ``users`` (cosine, payload indexes) and record encoder id and dim.

        Raises ``EncoderMismatch`` if they already hold another encoder's vectors, unless ``rebuild``
        (which drops and recreates both collections).
        """

    @abstractmethod
    def info(self) -> StoreInfo | None:
        """The recorded encoder id and dimension, or None before the first ``setup``."""

    # -- points --------------------------------------------------------------------------------------------
    @abstractmethod
    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        """Insert or replace points by id. Acknowledged points survive a crash (the backend's WAL)."""

    @abstractmethod
    def retrieve(self, collection: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[Point]:
        """Points with these ids that exist (missing ids are left out), in no particular order."""

    def retrieve_vectors(self, collection: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """``point id -> vector`` (float32, as stored) of the points with these ids that exist and have one;
        no payload (backends override this to leave payloads in the store)."""
        return {p.id: p.vector for p in self.retrieve(collection, ids, with_vectors=True) if p.vector is not None}

    @abstractmethod
    def scroll(
        self, collection: str, flt: Filter | None = None, *, with_vectors: bool = False, batch_size: int = 1000
    ) -> Iterator[Point]:
        """Every point that matches ``flt``."""

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
        """``scroll`` with only the payload ``keys`` (a bulk read: backends fetch only those keys, which is most
        of the cost of reading millions of points); ``with_ids=False`` may leave ``Point.id`` empty (saves
        building a UUID per point)."""
        for p in self.scroll(collection, flt, with_vectors=with_vectors, batch_size=batch_size):
            yield Point(p.id if with_ids else "", p.vector, {k: p.payload[k] for k in keys if k in p.payload})

    @abstractmethod
    def delete(self, collection: str, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def delete_by_filter(self, collection: str, flt: Filter) -> None: ...

    @abstractmethod
    def count(self, collection: str, flt: Filter | None = None) -> int:
        """Exact count of points matching ``flt``."""

    @abstractmethod
    def query(self, collection: str, query: Query) -> list[ScoredPoint]:
        """Nearest neighbours by cosine similarity, best first, at most ``query.limit``."""

    def query_batch(self, collection: str, queries: Sequence[Query]) -> list[list[ScoredPoint]]:
        """Several queries in one round trip (backends override this with a real batch call)."""
        return [self.query(collection, q) for q in queries]

    def query_hits(self, collection: str, queries: Sequence[Query]) -> list[Hits]:
        """``query_batch`` answering ids and scores only (payload and vector requests are ignored): the same
        points in the same order, with no ``ScoredPoint`` built per point where the backend can avoid it (the
        Edge store overrides this; stage 1 of the learned ``recommend()`` asks for 600 per call)."""
        bare = [replace(q, with_payload=False, with_vectors=False) for q in queries]
        return [
            Hits([p.id for p in res], np.array([p.score for p in res], dtype=np.float64).reshape(len(res)))
            for res in self.query_batch(collection, bare)
        ]

    def recommend(self, collection: str, query: RecommendQuery) -> list[ScoredPoint]:
        """Qdrant's Recommendation API (see ``RecommendQuery``), best first, never returning an example.

        Raises ``InvalidInput`` for an unknown strategy, no examples at all, or ``average_vector`` without a
        positive; examples that are not stored are ignored.
        """
        if query.strategy not in RECOMMEND_STRATEGIES:
            raise InvalidInput(
                f"recommend strategy: {query.strategy!r} is not one of {', '.join(RECOMMEND_STRATEGIES)}"
            )
        examples = {
            p.id: p.vector for p in self.retrieve(collection, [*query.positive, *query.negative], with_vectors=True)
        }
        dim = next((int(v.shape[0]) for v in examples.values() if v is not None), 0)
        pos = np.array([examples[i] for i in query.positive if examples.get(i) is not None], np.float32).reshape(
            -1, dim
        )
        neg = np.array([examples[i] for i in query.negative if examples.get(i) is not None], np.float32).reshape(
            -1, dim
        )
        if len(pos) == 0 and (query.strategy == "average_vector" or len(neg) == 0):
            raise InvalidInput(f"recommend ({query.strategy}): no stored positive example")
        skip = HasId.of([*query.positive, *query.negative])
        flt = query.filter or Filter()
        flt = Filter(must=flt.must, must_not=(*flt.must_not, skip))
        return self._recommend_vectors(collection, pos, neg, query, flt)

    def _recommend_vectors(
        self, collection: str, pos: np.ndarray, neg: np.ndarray, query: RecommendQuery, flt: Filter
    ) -> list[ScoredPoint]:
        """``recommend`` from the examples' vectors: ``average_vector`` as one nearest query; backends with
        a native ``best_score`` override this."""
        if query.strategy != "average_vector":
            raise InvalidInput(f"recommend: strategy {query.strategy!r} is not supported by the {self.backend} backend")
        vec = average_vector_query(pos, neg)
        return self.query(collection, Query(vector=vec, limit=query.limit, filter=flt, with_payload=query.with_payload))

    def set_payload(self, collection: str, changes: Mapping[str, Mapping[str, Any]]) -> None:
        """Change some payload keys of existing points, keeping their vectors and other keys.

        ``changes``: point id -> {key: new value, or None to delete the key}. Backends override this with
        a real partial update (which leaves a vector index as it is); this default rewrites whole points.
        Ids that are not stored are skipped.
        """
        if not changes:
            return
        points = self.retrieve(collection, list(changes), with_vectors=True)
        for p in points:
            for key, value in changes[p.id].items():
                if value is None:
                    p.payload.pop(key, None)
                else:
                    p.payload[key] = value
        self.upsert(collection, points)

    def write_count(self, collection: str) -> int | None:
        """How many write calls (``upsert``, ``set_payload``, ``delete``, ``delete_by_filter``, ``setup``) this
        object has made to ``collection`` so far, each counted once it returned (or failed); None where other
        processes may write to the same collections (a Qdrant server), so no process may cache what they hold.
        Embedded stores hold their folder's lock: there, this count changing is the only way their content
        changes, and per-process caches (``engine.ranking.feedback_cache``, ``engine.ranking.user_copies``) key
        on it."""
        return None

    def cache_folder(self) -> Path | None:
        """Folder for caches derived from the users collection (engine.reciprocity.table), or None where this
        backend keeps none (a Qdrant server: no local folder)."""
        return None

    def cache_token(self) -> str | None:
        """The token of the cache that matches the users collection as stored now (recorded in META), or
        None: no cache may be trusted. Writes to the users collection keep it honest (engine/store/cache.py)."""
        return None

    def set_cache_token(self, token: str | None) -> None:  # noqa: B027 - nothing to record without a folder
        """Record ``token`` as the cache that matches the users collection now (None: drop the cache, its
        files included). Where ``cache_folder()`` is None this does nothing."""

    def optimize(self) -> None:  # noqa: B027 - a no-op is right for backends that index by themselves
        """Build indexes after a bulk write (Edge builds HNSW only here; a server does it by itself)."""

    def begin_erasure(self) -> None:  # noqa: B027 - nothing to record where deleted data leaves no trace
        """Record, before an erasure deletes anything, that ``finish_erasure`` is owed (so a kill between the
        two is completed at the next open)."""

    def finish_erasure(self, *, changed: bool = True) -> bool:
        """Make points deleted so far unrecoverable from the store's own files (segments, WAL, payload
        indexes keep a deleted point's bytes until rewritten); ``changed=False``: nothing was deleted, only
        clear what ``begin_erasure`` recorded. Returns True if this backend rewrote its files."""
        return False

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
