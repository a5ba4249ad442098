"""The store seam: one abstract surface over Qdrant, with an implementation per backend.

Vectors cross this seam as ``numpy.float32`` arrays, L2-normalised by whoever made them; collections use
cosine distance, so a score is a cosine similarity in [-1, 1]. Point ids are UUID strings
(see ``engine.schema``). Every method may raise ``StoreUnavailable``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from engine.filters import Filter


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
class Query:
    """One nearest-neighbour query. ``with_payload`` may name the only payload keys to return."""

    vector: np.ndarray
    limit: int
    filter: Filter | None = None
    with_payload: bool | tuple[str, ...] = True
    with_vectors: bool = False
    exact: bool = False  # brute force instead of the HNSW index (tests, recall checks)


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

    @abstractmethod
    def scroll(
        self, collection: str, flt: Filter | None = None, *, with_vectors: bool = False, batch_size: int = 1000
    ) -> Iterator[Point]:
        """Every point that matches ``flt``."""

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

    def optimize(self) -> None:  # noqa: B027 - a no-op is right for backends that index by themselves
        """Build indexes after a bulk write (Edge builds HNSW only here; a server does it by itself)."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
