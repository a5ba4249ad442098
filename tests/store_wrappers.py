"""A real store behind a wrapper that a test can make fail or stop at chosen calls.

``PassThroughStore`` hands every call to the real store it wraps; a test's wrapper overrides only the calls
it interferes with (``upsert``, ``optimize``...). ``set_payload`` is not passed through on purpose: the
``Store`` default rewrites points through ``upsert``, so an injected ``upsert`` failure covers it too.

Importable from any test module (``pythonpath = ["tests"]``) and from the reliability child process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from engine.filters import Filter
from engine.store.base import Point, Query, ScoredPoint, Store, StoreInfo


class PassThroughStore(Store):
    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.backend = inner.backend

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        self.inner.upsert(collection, points)

    def setup(self, encoder_id: str, dim: int, *, rebuild: bool = False) -> None:
        self.inner.setup(encoder_id, dim, rebuild=rebuild)

    def info(self) -> StoreInfo | None:
        return self.inner.info()

    def retrieve(self, collection: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[Point]:
        return self.inner.retrieve(collection, ids, with_vectors=with_vectors)

    def scroll(
        self, collection: str, flt: Filter | None = None, *, with_vectors: bool = False, batch_size: int = 1000
    ) -> Iterator[Point]:
        return self.inner.scroll(collection, flt, with_vectors=with_vectors, batch_size=batch_size)

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        self.inner.delete(collection, ids)

    def delete_by_filter(self, collection: str, flt: Filter) -> None:
        self.inner.delete_by_filter(collection, flt)

    def count(self, collection: str, flt: Filter | None = None) -> int:
        return self.inner.count(collection, flt)

    def query(self, collection: str, query: Query) -> list[ScoredPoint]:
        return self.inner.query(collection, query)

    def query_batch(self, collection: str, queries: Sequence[Query]) -> list[list[ScoredPoint]]:
        return self.inner.query_batch(collection, queries)

    def optimize(self) -> None:
        self.inner.optimize()

    def close(self) -> None:
        self.inner.close()
