"""The store on qdrant-client: a Qdrant server (``connect``) or qdrant-client's local mode (``embedded``).

Local mode is qdrant-client's pure-Python engine (exact search, no payload indexes, the whole store in
memory); it is the reference the Edge backend is checked against and a fallback where Edge cannot run.
The server is what production uses: same API, HNSW and payload indexes, built by the server itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from engine.errors import InvalidInput, StoreLocked, StoreUnavailable
from engine.filters import Filter, HasId, MatchAny, Range
from engine.redaction import redact_url, register_secret, register_url_secrets
from engine.schema import META
from engine.settings import Settings
from engine.store.base import RECOMMEND_STRATEGIES, Point, Query, RecommendQuery, ScoredPoint
from engine.store.lock import FolderLock
from engine.store.meta import AUX_INDEXES, AUX_SEGMENT_KB, META_POINT_ID, META_VECTOR
from engine.store.qdrant_base import QdrantStore, empty_filter_error, payload_changes, upsert_vectors, with_payload

log = logging.getLogger(__name__)

_SCHEMA_TYPES: dict[str, models.PayloadSchemaType] = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
}


def _redact(url: str) -> str:
    """The URL without any ``user:password@`` part and with every query value masked (safe to log or show)."""
    return redact_url(url)


def _is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means "the store cannot be reached or is overloaded" (worth a retry), not a bug."""
    if isinstance(exc, ResponseHandlingException | httpx.TransportError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, UnexpectedResponse):
        # 5xx: server trouble; 429: overloaded. 4xx otherwise is our request's fault.
        return exc.status_code is None or exc.status_code >= 500 or exc.status_code == 429
    try:  # grpc is a dependency of qdrant-client; only network-type status codes are transient
        import grpc

        if isinstance(exc, grpc.RpcError):
            code = exc.code() if hasattr(exc, "code") else None
            return code in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
    except ImportError:  # pragma: no cover
        pass
    return False


def to_qdrant_filter(flt: Filter | None) -> models.Filter | None:
    """Translate ``engine.filters.Filter`` to qdrant-client's ``models.Filter`` (None for no filter)."""
    if flt is None or flt.is_empty():
        return None

    def cond(c: MatchAny | Range | HasId) -> models.Condition:
        if isinstance(c, MatchAny):
            return models.FieldCondition(key=c.key, match=models.MatchAny(any=list(c.values)))  # type: ignore[arg-type]
        if isinstance(c, Range):
            return models.FieldCondition(key=c.key, range=models.Range(gte=c.gte, lte=c.lte))
        if isinstance(c, HasId):
            return models.HasIdCondition(has_id=sorted(c.ids))
        raise TypeError(f"unknown filter condition {c!r}")

    return models.Filter(
        must=[cond(c) for c in flt.must] or None,
        must_not=[cond(c) for c in flt.must_not] or None,
    )


class QdrantClientStore(QdrantStore):
    """``Store`` over a ``QdrantClient`` (server or local mode). Build it with ``connect`` or ``embedded``."""

    def __init__(
        self,
        client: QdrantClient,
        *,
        backend: str,
        where: str,
        prefix: str = "",
        lock: FolderLock | None = None,
    ) -> None:
        self._client = client
        self.backend = backend
        self.where = where  # for messages: the redacted URL or the folder
        self.prefix = prefix
        self._lock = lock
        self._closed = False

    # -- construction --------------------------------------------------------------------------------------
    @classmethod
    def connect(cls, settings: Settings) -> QdrantClientStore:
        """A Qdrant server at ``settings.qdrant_url`` (API key from ``settings.qdrant_api_key``).

        Raises ``StoreUnavailable`` naming the URL (never the key) if the server does not answer.
        """
        if not settings.qdrant_url:
            raise InvalidInput("qdrant_url: no Qdrant server URL is set (MATCHER_QDRANT_URL)")
        url = _redact(settings.qdrant_url)
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        # Before the client exists: its httpx/httpcore debug records (headers, URLs) are scrubbed from the start.
        register_secret(api_key)
        register_url_secrets(settings.qdrant_url)
        try:
            client = QdrantClient(
                url=settings.qdrant_url,
                api_key=api_key,
                timeout=max(1, math.ceil(settings.qdrant_timeout_s)),
                check_compatibility=False,  # it only warns; our probe below fails clearly instead
            )
        except Exception as exc:  # a malformed URL ends here
            raise InvalidInput(f"qdrant_url: cannot use {url!r}: {type(exc).__name__}") from None
        store = cls(client, backend="server", where=f"the Qdrant server at {url}", prefix=settings.collection_prefix)
        try:
            client.get_collections()
        except Exception as exc:
            client.close()
            if isinstance(exc, UnexpectedResponse) and exc.status_code in (401, 403):
                raise StoreUnavailable(
                    f"the Qdrant server at {url} refused the API key (HTTP {exc.status_code}); "
                    "check MATCHER_QDRANT_API_KEY"
                ) from None
            if _is_unavailable(exc):
                # ``from None``: the chained httpx error could carry request headers, i.e. the API key.
                raise StoreUnavailable(
                    f"the Qdrant server at {url} does not answer ({type(exc).__name__}); is it running?"
                ) from None
            if isinstance(exc, UnexpectedResponse):
                # Another HTTP service at that URL. Never show its body: a proxy may echo our headers
                # (the key).
                raise StoreUnavailable(
                    f"{url} answered HTTP {exc.status_code} to Qdrant's API; is it a Qdrant server? "
                    "check MATCHER_QDRANT_URL"
                ) from None
            raise
        log.info("connected to %s", store.where)
        return store

    @classmethod
    def embedded(cls, settings: Settings) -> QdrantClientStore:
        """qdrant-client's local mode in ``settings.store_path``.

        Raises ``StoreLocked`` if another process holds that folder.
        """
        path = settings.store_path
        lock = FolderLock.acquire(path)
        try:
            client = QdrantClient(path=str(path))
        except RuntimeError as exc:
            lock.release()
            if "already accessed" in str(exc):
                raise StoreLocked(f"the store folder {path} is in use by another Qdrant client") from exc
            raise
        except BaseException:
            lock.release()
            raise
        store = cls(
            client,
            backend="local",
            where=f"the local store {path}",
            prefix=settings.collection_prefix,
            lock=lock,
        )
        store._cache_root = Path(path)  # the refresh cache lives beside the collections
        return store

    # -- helpers -------------------------------------------------------------------------------------------
    def _raise_mapped(self, exc: Exception, what: str, collection: str | None) -> None:
        """Transport failures -> ``StoreUnavailable``, missing collections and wrong vector sizes ->
        ``InvalidInput``; programming errors pass through unchanged."""
        if isinstance(exc, UnexpectedResponse) and exc.status_code == 404 and collection is not None:
            raise self._missing(collection) from None
        if isinstance(exc, ValueError) and collection is not None and "not found" in str(exc):
            raise self._missing(collection) from exc
        if _is_unavailable(exc):
            raise StoreUnavailable(f"{what} failed on {self.where}: {type(exc).__name__}") from None
        # A vector of the wrong size is bad input (local mode: ValueError; a server: HTTP 400).
        # The server's body is only searched, never shown (see connect: a proxy may echo headers).
        if isinstance(exc, UnexpectedResponse) and b"dimension error" in (exc.content or b""):
            raise InvalidInput(
                f"{what} on {self.name(collection or '?')!r}: a vector's dimension does not match the collection's"
            ) from None
        if isinstance(exc, ValueError) and "dimension error" in str(exc):
            raise InvalidInput(f"{what} on {self.name(collection or '?')!r}: {exc}") from None

    def _missing(self, collection: str) -> InvalidInput:
        return InvalidInput(
            f"collection {self.name(collection)!r} does not exist in {self.where}; run the ingestion first"
        )

    def _exists(self, collection: str) -> bool:
        with self._calling("collection_exists"):
            return bool(self._client.collection_exists(self.name(collection)))

    # -- collections (setup and info: QdrantStore) -------------------------------------------------------
    def _drop(self, collection: str) -> None:
        with self._calling("delete_collection", collection):
            if self._client.collection_exists(self.name(collection)):
                self._client.delete_collection(self.name(collection))

    def _create(self, collection: str, dim: int, indexes: dict[str, str]) -> None:
        # The feedback log's segments as on Edge (AUX_SEGMENT_KB): sealed at ~1 M points, never merged again. A
        # server applies it in its background optimizers; local mode ignores optimizer settings.
        optimizers = (
            models.OptimizersConfigDiff(indexing_threshold=AUX_SEGMENT_KB, max_segment_size=AUX_SEGMENT_KB)
            if collection in AUX_INDEXES
            else None
        )
        with self._calling("create_collection", collection):
            self._client.create_collection(
                self.name(collection),
                vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                optimizers_config=optimizers,
            )
        for field, kind in indexes.items():
            self._add_index(collection, field, kind)

    def _add_index(self, collection: str, field: str, kind: str) -> None:
        if self.backend == "local":  # local mode has no payload indexes (it warns and ignores them)
            return
        with self._calling("create_payload_index", collection):
            self._client.create_payload_index(
                self.name(collection), field_name=field, field_schema=_SCHEMA_TYPES[kind], wait=True
            )

    def _write_meta(self, payload: dict[str, Any]) -> None:
        point = models.PointStruct(id=META_POINT_ID, vector=META_VECTOR.tolist(), payload=payload)
        with self._calling("upsert", META):
            self._client.upsert(self.name(META), points=[point], wait=True)

    def _read_meta(self) -> dict[str, Any] | None:
        if not self._exists(META):
            return None
        with self._calling("retrieve", META):
            recs = self._client.retrieve(self.name(META), ids=[META_POINT_ID], with_payload=True)
        return dict(recs[0].payload or {}) if recs else None

    def _vector_size(self, collection: str) -> int:
        with self._calling("get_collection", collection):
            params = self._client.get_collection(self.name(collection)).config.params.vectors
        if isinstance(params, dict):
            params = params.get("", next(iter(params.values())))
        if params is None:
            raise InvalidInput(f"collection {self.name(collection)!r} has no default vector")
        return int(params.size)

    def payload_indexes(self, collection: str) -> dict[str, str]:
        """Indexed payload fields of ``collection`` -> ``"keyword"`` / ``"integer"`` (local mode: none)."""
        with self._calling("get_collection", collection):
            schema = self._client.get_collection(self.name(collection)).payload_schema
        return {k: str(v.data_type.value) for k, v in schema.items()}

    # -- points --------------------------------------------------------------------------------------------
    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        if not points:
            return
        self._before_write(collection, [p.id for p in points])
        structs = [
            models.PointStruct(id=p.id, vector=v, payload=p.payload)
            for p, v in zip(points, upsert_vectors(points), strict=True)
        ]
        with self._calling("upsert", collection):
            # wait=True: it returns once the server applied it (its WAL has it), so "acknowledged" holds.
            self._client.upsert(self.name(collection), points=structs, wait=True)

    def set_payload(self, collection: str, changes: Mapping[str, Mapping[str, Any]]) -> None:
        """Partial payload updates (``Store.set_payload``) in one ``batch_update_points`` call: the vectors
        are not resent, so a server does not re-index the points. Ids that are not stored are skipped."""
        if not changes:
            return
        self._before_write(collection, list(changes))
        with self._calling("retrieve", collection):
            recs = self._client.retrieve(
                self.name(collection), ids=list(changes), with_payload=False, with_vectors=False
            )
        ops: list[models.UpdateOperation] = []
        for pid, put, drop in payload_changes(changes, (str(r.id) for r in recs)):
            if put:
                ops.append(models.SetPayloadOperation(set_payload=models.SetPayload(payload=put, points=[pid])))
            if drop:
                ops.append(models.DeletePayloadOperation(delete_payload=models.DeletePayload(keys=drop, points=[pid])))
        if ops:
            with self._calling("set_payload", collection):
                self._client.batch_update_points(self.name(collection), update_operations=ops, wait=True)

    def retrieve(self, collection: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[Point]:
        if not ids:
            return []
        with self._calling("retrieve", collection):
            recs = self._client.retrieve(
                self.name(collection), ids=list(ids), with_payload=True, with_vectors=with_vectors
            )
        return self._points(recs)

    def _scroll_page(
        self, collection: str, flt: Filter | None, offset: Any, limit: int, with_vectors: bool
    ) -> tuple[list[Point], Any]:
        with self._calling("scroll", collection):
            recs, offset = self._client.scroll(
                self.name(collection),
                scroll_filter=to_qdrant_filter(flt),
                limit=limit,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            )
        return self._points(recs), offset

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        self._before_write(collection, None)  # a deleted user's data must leave the refresh cache too
        with self._calling("delete", collection):
            self._client.delete(self.name(collection), points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def delete_by_filter(self, collection: str, flt: Filter) -> None:
        """Delete the points matching ``flt``; an empty filter is refused (``InvalidInput``), never "all"."""
        qf = to_qdrant_filter(flt)
        if qf is None:
            raise empty_filter_error()
        self._before_write(collection, None)
        with self._calling("delete", collection):
            self._client.delete(self.name(collection), points_selector=models.FilterSelector(filter=qf), wait=True)

    def count(self, collection: str, flt: Filter | None = None) -> int:
        with self._calling("count", collection):
            return int(self._client.count(self.name(collection), count_filter=to_qdrant_filter(flt), exact=True).count)

    def _request(self, q: Query) -> models.QueryRequest:
        return models.QueryRequest(
            query=np.asarray(q.vector, dtype=np.float32).tolist(),
            filter=to_qdrant_filter(q.filter),
            limit=q.limit,
            with_payload=with_payload(q.with_payload),
            with_vector=q.with_vectors,
            # Local mode is always exact (and warns on search params).
            params=models.SearchParams(exact=True) if q.exact and self.backend != "local" else None,
        )

    def query(self, collection: str, query: Query) -> list[ScoredPoint]:
        return self.query_batch(collection, [query])[0]

    def query_batch(self, collection: str, queries: Sequence[Query]) -> list[list[ScoredPoint]]:
        """All ``queries`` in one ``query_batch_points`` call (one round trip to a server)."""
        if not queries:
            return []
        with self._calling("query", collection):
            responses = self._client.query_batch_points(
                self.name(collection), requests=[self._request(q) for q in queries]
            )
        return [self._scored(r.points, q) for r, q in zip(responses, queries, strict=True)]

    def recommend(self, collection: str, query: RecommendQuery) -> list[ScoredPoint]:
        """Qdrant's own Recommendation API with point ids as examples (the server averages or scores them)."""
        if query.strategy not in RECOMMEND_STRATEGIES:
            known = ", ".join(RECOMMEND_STRATEGIES)
            raise InvalidInput(f"recommend strategy: {query.strategy!r} is not one of {known}")
        stored = {p.id for p in self.retrieve(collection, [*query.positive, *query.negative])}
        pos = [i for i in query.positive if i in stored]
        neg = [i for i in query.negative if i in stored]
        if not pos and (query.strategy == "average_vector" or not neg):
            raise InvalidInput(f"recommend ({query.strategy}): no stored positive example")
        strategy = (
            models.RecommendStrategy.AVERAGE_VECTOR
            if query.strategy == "average_vector"
            else models.RecommendStrategy.BEST_SCORE
        )
        request = models.QueryRequest(
            query=models.RecommendQuery(recommend=models.RecommendInput(positive=pos, negative=neg, strategy=strategy)),
            filter=to_qdrant_filter(query.filter),
            limit=query.limit,
            with_payload=with_payload(query.with_payload),
        )
        q = Query(vector=np.zeros(1, np.float32), limit=query.limit, with_payload=query.with_payload)
        with self._calling("query", collection):
            responses = self._client.query_batch_points(self.name(collection), requests=[request])
        return self._scored(responses[0].points, q)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._client.close()
        finally:
            if self._lock is not None:
                self._lock.release()
