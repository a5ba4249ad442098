"""The store on qdrant-client: a Qdrant server (``connect``) or qdrant-client's local mode (``embedded``).

Local mode is qdrant-client's pure-Python engine (exact search, no payload indexes, the whole store in
memory); it is the reference the Edge backend is checked against and a fallback where Edge cannot run.
The server is what production uses: same API, HNSW and payload indexes, built by the server itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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
from engine.store.base import RECOMMEND_STRATEGIES, Point, Query, RecommendQuery, ScoredPoint, Store, StoreInfo
from engine.store.lock import FolderLock
from engine.store.meta import (
    AUX_INDEXES,
    COLLECTION_INDEXES,
    META_DIM,
    META_POINT_ID,
    META_VECTOR,
    check_encoder,
    info_from_payload,
    meta_payload,
)

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


def _with_payload(value: bool | tuple[str, ...]) -> bool | list[str]:
    return list(value) if isinstance(value, tuple) else bool(value)


def _vector(v: Any) -> np.ndarray | None:
    if v is None:
        return None
    if isinstance(v, dict):  # named vectors: we only use the default one
        v = v.get("", next(iter(v.values()), None))
        if v is None:
            return None
    return np.asarray(v, dtype=np.float32)


class QdrantClientStore(Store):
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
        store = cls(
            client, backend="server", where=f"the Qdrant server at {url}", prefix=settings.collection_prefix
        )
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
        return cls(
            client,
            backend="local",
            where=f"the local store {path}",
            prefix=settings.collection_prefix,
            lock=lock,
        )

    # -- helpers -------------------------------------------------------------------------------------------
    def name(self, collection: str) -> str:
        """The backend's name of a logical collection (``settings.collection_prefix`` + name)."""
        return f"{self.prefix}{collection}"

    @contextmanager
    def _calling(self, what: str, collection: str | None = None) -> Iterator[None]:
        """Turn the backend's transport failures into ``StoreUnavailable`` and missing collections into
        ``InvalidInput``; let programming errors through unchanged."""
        if self._closed:
            raise StoreUnavailable(f"{self.where} is closed")
        try:
            yield
        except (StoreUnavailable, InvalidInput):
            raise
        except Exception as exc:
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
                    f"{what} on {self.name(collection or '?')!r}: a vector's dimension does not match the "
                    "collection's"
                ) from None
            if isinstance(exc, ValueError) and "dimension error" in str(exc):
                raise InvalidInput(f"{what} on {self.name(collection or '?')!r}: {exc}") from None
            raise

    def _missing(self, collection: str) -> InvalidInput:
        return InvalidInput(
            f"collection {self.name(collection)!r} does not exist in {self.where}; run the ingestion first"
        )

    def _exists(self, collection: str) -> bool:
        with self._calling("collection_exists"):
            return bool(self._client.collection_exists(self.name(collection)))

    # -- collections ---------------------------------------------------------------------------------------
    def setup(self, encoder_id: str, dim: int, *, rebuild: bool = False) -> None:
        if dim < 1:
            raise InvalidInput(f"dim: must be positive, got {dim}")
        if rebuild:
            with self._calling("delete_collection"):
                for c in (*COLLECTION_INDEXES, META):
                    if self._client.collection_exists(self.name(c)):
                        self._client.delete_collection(self.name(c))
        else:
            check_encoder(self.info(), encoder_id, dim, self.where)
            # A store without META (made by hand, or META lost) must still not mix dimensions.
            for c in COLLECTION_INDEXES:
                if self._exists(c):
                    size = self._vector_size(c)
                    if size != dim:
                        check_encoder(
                            StoreInfo(encoder_id="<unrecorded>", dim=size), encoder_id, dim, self.where
                        )
        with self._calling("create_collection"):
            for c, indexes in COLLECTION_INDEXES.items():
                if not self._client.collection_exists(self.name(c)):
                    self._client.create_collection(
                        self.name(c),
                        vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                    )
                if self.backend != "local":  # local mode has no payload indexes (it warns and ignores them)
                    have = self.payload_indexes(c)
                    for field, kind in indexes.items():
                        if have.get(field) != kind:
                            self._client.create_payload_index(
                                self.name(c), field_name=field, field_schema=_SCHEMA_TYPES[kind], wait=True
                            )
            for c, indexes in AUX_INDEXES.items():
                if not self._client.collection_exists(self.name(c)):
                    self._client.create_collection(
                        self.name(c),
                        vectors_config=models.VectorParams(size=META_DIM, distance=models.Distance.COSINE),
                    )
                if self.backend != "local":
                    have = self.payload_indexes(c)
                    for field, kind in indexes.items():
                        if have.get(field) != kind:
                            self._client.create_payload_index(
                                self.name(c), field_name=field, field_schema=_SCHEMA_TYPES[kind], wait=True
                            )
            if not self._client.collection_exists(self.name(META)):
                self._client.create_collection(
                    self.name(META),
                    vectors_config=models.VectorParams(size=META_DIM, distance=models.Distance.COSINE),
                )
            self._client.upsert(
                self.name(META),
                points=[
                    models.PointStruct(
                        id=META_POINT_ID, vector=META_VECTOR.tolist(), payload=meta_payload(encoder_id, dim)
                    )
                ],
                wait=True,
            )
        log.info("store ready on %s: encoder %s, dim %d", self.where, encoder_id, dim)

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

    def info(self) -> StoreInfo | None:
        if not self._exists(META):
            return None
        with self._calling("retrieve", META):
            recs = self._client.retrieve(self.name(META), ids=[META_POINT_ID], with_payload=True)
        return info_from_payload(recs[0].payload) if recs else None

    # -- points --------------------------------------------------------------------------------------------
    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        if not points:
            return
        structs = []
        for p in points:
            if p.vector is None:
                raise InvalidInput(f"point {p.id}: no vector to upsert")
            structs.append(
                models.PointStruct(
                    id=p.id, vector=np.asarray(p.vector, dtype=np.float32).tolist(), payload=p.payload
                )
            )
        with self._calling("upsert", collection):
            # wait=True: it returns once the server applied it (its WAL has it), so "acknowledged" holds.
            self._client.upsert(self.name(collection), points=structs, wait=True)

    def set_payload(self, collection: str, changes: Mapping[str, Mapping[str, Any]]) -> None:
        """Partial payload updates (``Store.set_payload``) in one ``batch_update_points`` call: the vectors
        are not resent, so a server does not re-index the points. Ids that are not stored are skipped."""
        if not changes:
            return
        with self._calling("retrieve", collection):
            recs = self._client.retrieve(
                self.name(collection), ids=list(changes), with_payload=False, with_vectors=False
            )
        have = {str(r.id) for r in recs}
        ops: list[models.UpdateOperation] = []
        for pid, fields in changes.items():
            if pid not in have:
                continue
            put = {k: v for k, v in fields.items() if v is not None}
            drop = [k for k, v in fields.items() if v is None]
            if put:
                ops.append(models.SetPayloadOperation(set_payload=models.SetPayload(payload=put, points=[pid])))
            if drop:
                ops.append(
                    models.DeletePayloadOperation(delete_payload=models.DeletePayload(keys=drop, points=[pid]))
                )
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
        return [Point(id=str(r.id), vector=_vector(r.vector), payload=dict(r.payload or {})) for r in recs]

    def scroll(
        self,
        collection: str,
        flt: Filter | None = None,
        *,
        with_vectors: bool = False,
        batch_size: int = 1000,
    ) -> Iterator[Point]:
        qf = to_qdrant_filter(flt)
        offset: Any = None
        while True:
            with self._calling("scroll", collection):
                recs, offset = self._client.scroll(
                    self.name(collection),
                    scroll_filter=qf,
                    limit=batch_size,
                    offset=offset,
                    with_payload=True,
                    with_vectors=with_vectors,
                )
            for r in recs:
                yield Point(id=str(r.id), vector=_vector(r.vector), payload=dict(r.payload or {}))
            if offset is None:
                return

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._calling("delete", collection):
            self._client.delete(
                self.name(collection), points_selector=models.PointIdsList(points=list(ids)), wait=True
            )

    def delete_by_filter(self, collection: str, flt: Filter) -> None:
        """Delete the points matching ``flt``; an empty filter is refused (``InvalidInput``), never "all"."""
        qf = to_qdrant_filter(flt)
        if qf is None:
            raise InvalidInput("delete_by_filter: the filter is empty (refusing to delete every point)")
        with self._calling("delete", collection):
            self._client.delete(
                self.name(collection), points_selector=models.FilterSelector(filter=qf), wait=True
            )

    def count(self, collection: str, flt: Filter | None = None) -> int:
        with self._calling("count", collection):
            return int(
                self._client.count(
                    self.name(collection), count_filter=to_qdrant_filter(flt), exact=True
                ).count
            )

    def _request(self, q: Query) -> models.QueryRequest:
        return models.QueryRequest(
            query=np.asarray(q.vector, dtype=np.float32).tolist(),
            filter=to_qdrant_filter(q.filter),
            limit=q.limit,
            with_payload=_with_payload(q.with_payload),
            with_vector=q.with_vectors,
            # Local mode is always exact (and warns on search params).
            params=models.SearchParams(exact=True) if q.exact and self.backend != "local" else None,
        )

    @staticmethod
    def _scored(points: Sequence[models.ScoredPoint], q: Query) -> list[ScoredPoint]:
        return [
            ScoredPoint(
                id=str(p.id),
                score=float(p.score),
                payload=dict(p.payload or {}) if q.with_payload else None,
                vector=_vector(p.vector) if q.with_vectors else None,
            )
            for p in points
        ]

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
            with_payload=_with_payload(query.with_payload),
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
