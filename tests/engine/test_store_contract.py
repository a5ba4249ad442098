"""The store contract: one suite, run on every backend (Edge, qdrant-client local mode, a Qdrant server).

Expected results come from brute force in numpy over the same data, so a backend that filters, scores or
orders wrongly fails here. After the contract, a congruence test runs the same random data and queries on
Edge and on qdrant-client's local mode and compares them (as qdrant-client's tests/congruence_tests do).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from pydantic import SecretStr

from engine.errors import EncoderMismatch, InvalidInput, StoreUnavailable
from engine.filters import Filter, HasId, MatchAny, Range
from engine.schema import PHOTO_INDEXES, PHOTOS, USER_INDEXES, USERS, user_point_id
from engine.settings import Settings
from engine.store import Point, Query, ScoredPoint, Store
from engine.store.client import QdrantClientStore

if TYPE_CHECKING:
    from tests.engine.conftest import StoreFactory

DIM = 16
GENDERS = ("female", "male", "nonbinary")


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_users(n: int, seed: int = 0) -> tuple[list[Point], np.ndarray]:
    """``n`` user points with random unit vectors and the payloads the product stores."""
    rng = np.random.default_rng(seed)
    vectors = unit_rows(rng, n)
    points = []
    for i in range(n):
        gender = GENDERS[int(rng.integers(0, 3))]
        seeking = sorted(set(rng.choice(GENDERS, size=int(rng.integers(1, 3)), replace=False).tolist()))
        age = int(rng.integers(18, 70))
        user_id = f"user_{i:03d}"
        payload: dict[str, Any] = {
            "user_id": user_id,
            "gender": gender,
            "age": age,
            "seeking": seeking,
            "age_min": max(18, age - 8),
            "age_max": age + 8,
            "n_photos": int(rng.integers(1, 5)),
        }
        points.append(Point(id=user_point_id(user_id), vector=vectors[i], payload=payload))
    return points, vectors


def matches(payload: dict[str, Any], point_id: str, flt: Filter | None) -> bool:
    """The filter's meaning, in plain Python (the reference the backends are checked against)."""
    if flt is None:
        return True

    def holds(c: MatchAny | Range | HasId) -> bool:
        if isinstance(c, HasId):
            return point_id in c.ids
        value = payload.get(c.key)
        values = value if isinstance(value, list) else [value]
        if isinstance(c, MatchAny):
            return any(v in c.values for v in values)
        return any(
            isinstance(v, int | float) and (c.gte is None or v >= c.gte) and (c.lte is None or v <= c.lte)
            for v in values
        )

    return all(holds(c) for c in flt.must) and not any(holds(c) for c in flt.must_not)


def brute_force(points: Sequence[Point], vectors: np.ndarray, q: np.ndarray, flt: Filter | None, k: int):
    """Top-``k`` (id, cosine) by exact search over the points that pass ``flt``."""
    scores = vectors @ q
    keep = [i for i, p in enumerate(points) if matches(p.payload, p.id, flt)]
    keep.sort(key=lambda i: -scores[i])
    return [(points[i].id, float(scores[i])) for i in keep[:k]]


def assert_same_ranking(got: Sequence[ScoredPoint], want: Sequence[tuple[str, float]], tol: float = 1e-4) -> None:
    """Same length, same scores within ``tol``, and the same ids except where scores tie."""
    assert len(got) == len(want), (len(got), len(want))
    np.testing.assert_allclose([p.score for p in got], [s for _, s in want], atol=tol)
    for p, (wid, ws) in zip(got, want, strict=True):
        if p.id != wid:  # only acceptable for a tie
            assert abs(p.score - ws) <= tol
    if want:  # every id scoring clearly above the last place must be there, whatever the tie order
        last = want[-1][1]
        assert {i for i, s in want if s > last + tol} <= {p.id for p in got}


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    s = store_factory.open()
    s.setup("enc-test", DIM)
    return s


# -- setup and the META record ----------------------------------------------------------------------------


def test_info_is_none_before_setup_and_recorded_after(store_factory: StoreFactory) -> None:
    s = store_factory.open()
    assert s.info() is None
    with pytest.raises(InvalidInput, match="does not exist"):
        s.count(PHOTOS)
    s.setup("enc-a", DIM)
    info = s.info()
    assert info is not None and (info.encoder_id, info.dim) == ("enc-a", DIM)
    assert s.count(PHOTOS) == 0 and s.count(USERS) == 0


def test_setup_again_with_same_encoder_keeps_points(store: Store) -> None:
    points, _ = make_users(5)
    store.upsert(USERS, points)
    store.setup("enc-test", DIM)
    assert store.count(USERS) == 5


def test_setup_refuses_another_encoder_naming_both(store: Store) -> None:
    store.upsert(USERS, make_users(3)[0])
    with pytest.raises(EncoderMismatch) as err:
        store.setup("enc-other", DIM)
    assert "enc-test" in str(err.value) and "enc-other" in str(err.value)
    with pytest.raises(EncoderMismatch, match=f"dim {DIM}"):
        store.setup("enc-test", DIM * 2)
    assert store.count(USERS) == 3  # nothing was dropped by the refusals


def test_rebuild_drops_points_and_records_the_new_encoder(store: Store) -> None:
    store.upsert(USERS, make_users(3)[0])
    store.setup("enc-other", 8, rebuild=True)
    info = store.info()
    assert info is not None and (info.encoder_id, info.dim) == ("enc-other", 8)
    assert store.count(USERS) == 0
    v = np.zeros(8, dtype=np.float32)
    v[0] = 1.0
    store.upsert(USERS, [Point(user_point_id("a"), v, {"user_id": "a"})])
    assert [p.id for p in store.query(USERS, Query(v, 5))] == [user_point_id("a")]


def test_payload_indexes_are_created(store: Store, store_factory: StoreFactory) -> None:
    if store_factory.backend == "local":
        pytest.skip("qdrant-client's local mode keeps no payload indexes (it ignores them by design)")
    assert store.payload_indexes(PHOTOS) == PHOTO_INDEXES  # type: ignore[attr-defined]
    assert store.payload_indexes(USERS) == USER_INDEXES  # type: ignore[attr-defined]


def test_collection_prefix_keeps_stores_apart(store_factory: StoreFactory) -> None:
    a = store_factory.open()
    a.setup("enc-a", DIM)
    a.upsert(USERS, make_users(4)[0])
    if store_factory.backend != "server":  # embedded: one process per folder, so reopen with another prefix
        a.close()
    b = store_factory.open(collection_prefix=store_factory.settings.collection_prefix + "other_")
    assert b.info() is None
    b.setup("enc-b", 8)
    assert b.info() is not None and b.info().encoder_id == "enc-b"  # type: ignore[union-attr]
    if store_factory.backend != "server":
        b.close()
        a = store_factory.open()
    assert a.info() is not None and a.info().encoder_id == "enc-a"  # type: ignore[union-attr]
    assert a.count(USERS) == 4


# -- points -----------------------------------------------------------------------------------------------


def test_upsert_retrieve_and_idempotent_reupsert(store: Store) -> None:
    points, _ = make_users(20)
    store.upsert(USERS, points)
    store.upsert(USERS, points)  # re-ingestion of the same data must not duplicate
    assert store.count(USERS) == 20
    changed = Point(points[0].id, points[0].vector, {**points[0].payload, "age": 99})
    store.upsert(USERS, [changed])
    assert store.count(USERS) == 20
    got = store.retrieve(USERS, [points[0].id, points[1].id, str(uuid.uuid4())])
    by_id = {p.id: p for p in got}
    assert set(by_id) == {points[0].id, points[1].id}  # the unknown id is left out
    assert by_id[points[0].id].payload["age"] == 99
    assert by_id[points[1].id].payload == points[1].payload
    assert by_id[points[1].id].vector is None


def test_payload_round_trip_keeps_types(store: Store) -> None:
    payload = {
        "user_id": "Zoë-日本-🙂",
        "age": 31,
        "seeking": ["female", "nonbinary"],
        "photo_ids": [str(uuid.uuid4()), str(uuid.uuid4())],
        "kth_sim": 0.125,
        "flag": True,
        "note": None,
        "nested": {"a": [1, 2], "b": "x"},
    }
    v = unit_rows(np.random.default_rng(1), 1)[0]
    pid = user_point_id("Zoë-日本-🙂")
    store.upsert(USERS, [Point(pid, v, payload)])
    (got,) = store.retrieve(USERS, [pid])
    assert got.payload == payload
    assert type(got.payload["age"]) is int and type(got.payload["kth_sim"]) is float
    assert got.id == pid


def test_vectors_round_trip_as_float32(store: Store) -> None:
    points, vectors = make_users(10)
    store.upsert(USERS, points)
    got = {p.id: p.vector for p in store.retrieve(USERS, [p.id for p in points], with_vectors=True)}
    for p, v in zip(points, vectors, strict=True):
        back = got[p.id]
        assert back is not None and back.dtype == np.float32 and back.shape == (DIM,)
        np.testing.assert_allclose(back, v, atol=1e-6)
    (hit,) = store.query(USERS, Query(vectors[3], 1, with_vectors=True))
    assert hit.vector is not None and hit.vector.dtype == np.float32
    np.testing.assert_allclose(hit.vector, vectors[3], atol=1e-6)


def test_upsert_of_wrong_dimension_is_refused(store: Store) -> None:
    bad = Point(user_point_id("x"), np.ones(DIM + 1, dtype=np.float32), {"user_id": "x"})
    with pytest.raises(InvalidInput, match="dim"):
        store.upsert(USERS, [bad])
    assert store.count(USERS) == 0


def test_delete_and_delete_by_filter(store: Store) -> None:
    points, _ = make_users(30)
    store.upsert(USERS, points)
    store.delete(USERS, [points[0].id, points[1].id, str(uuid.uuid4())])  # unknown ids are ignored
    assert store.count(USERS) == 28
    assert store.retrieve(USERS, [points[0].id]) == []
    flt = Filter(must=(MatchAny.of("gender", ["male"]),))
    expected_left = sum(1 for p in points[2:] if p.payload["gender"] != "male")
    store.delete_by_filter(USERS, flt)
    assert store.count(USERS) == expected_left
    assert store.count(USERS, flt) == 0
    with pytest.raises(InvalidInput, match="empty"):
        store.delete_by_filter(USERS, Filter())
    assert store.count(USERS) == expected_left


def test_count_and_scroll_with_filters(store: Store) -> None:
    points, _ = make_users(50)
    store.upsert(USERS, points)
    flt = Filter(must=(Range("age", gte=30, lte=50),), must_not=(MatchAny.of("gender", ["nonbinary"]),))
    want = {p.id for p in points if matches(p.payload, p.id, flt)}
    assert 0 < len(want) < 50
    assert store.count(USERS, flt) == len(want)
    assert store.count(USERS) == 50
    scrolled = list(store.scroll(USERS, flt, batch_size=7))  # several pages
    assert {p.id for p in scrolled} == want and len(scrolled) == len(want)
    everything = list(store.scroll(USERS, with_vectors=True, batch_size=16))
    assert len(everything) == 50 and all(p.vector is not None and p.vector.dtype == np.float32 for p in everything)


# -- queries ----------------------------------------------------------------------------------------------

FILTERS: dict[str, Filter | None] = {
    "none": None,
    "keyword": Filter(must=(MatchAny.of("gender", ["female", "nonbinary"]),)),
    "integer_match": Filter(must=(MatchAny.of("n_photos", [1, 3]),)),
    "integer_range": Filter(must=(Range("age", gte=25, lte=40),)),
    "open_range": Filter(must=(Range("age", gte=50),)),
    "list_payload": Filter(must=(MatchAny.of("seeking", ["nonbinary"]),)),
    "must_not": Filter(must_not=(MatchAny.of("gender", ["male"]), Range("age", lte=22))),
    "combined": Filter(
        must=(MatchAny.of("seeking", ["female"]), Range("age_min", lte=35), Range("age_max", gte=35)),
        must_not=(MatchAny.of("gender", ["female"]),),
    ),
}


def test_filtered_queries_match_brute_force(store: Store) -> None:
    points, vectors = make_users(120, seed=3)
    store.upsert(USERS, points)
    queries = unit_rows(np.random.default_rng(4), 2)
    for name, flt in FILTERS.items():
        for q in queries:
            want = brute_force(points, vectors, q, flt, 10)
            assert want, f"{name}: the test data must give the filter something to match"
            got = store.query(USERS, Query(q, 10, filter=flt, with_payload=True))
            try:
                assert_same_ranking(got, want)
            except AssertionError as exc:
                raise AssertionError(f"filter {name!r}: {exc}") from exc
            assert all(matches(p.payload or {}, p.id, flt) for p in got), name


def test_has_id_filter(store: Store) -> None:
    points, vectors = make_users(60, seed=5)
    store.upsert(USERS, points)
    allowed = {p.id for p in points[10:25]}
    flt = Filter(must=(HasId.of(allowed),), must_not=(HasId.of([points[12].id]),))
    got = store.query(USERS, Query(vectors[0], 50, filter=flt))
    assert {p.id for p in got} == allowed - {points[12].id}
    assert_same_ranking(got, brute_force(points, vectors, vectors[0], flt, 50))
    assert store.count(USERS, Filter(must=(HasId.of([]),))) == 0


def test_query_limit_and_order(store: Store) -> None:
    points, vectors = make_users(40, seed=6)
    store.upsert(USERS, points)
    got = store.query(USERS, Query(vectors[7], 5))
    assert len(got) == 5
    assert got[0].id == points[7].id and got[0].score == pytest.approx(1.0, abs=1e-5)
    assert [p.score for p in got] == sorted((p.score for p in got), reverse=True)


def test_with_payload_subset_and_none(store: Store) -> None:
    points, vectors = make_users(10)
    store.upsert(USERS, points)
    (hit,) = store.query(USERS, Query(vectors[2], 1, with_payload=("user_id", "age")))
    assert hit.payload == {"user_id": points[2].payload["user_id"], "age": points[2].payload["age"]}
    (hit,) = store.query(USERS, Query(vectors[2], 1, with_payload=False))
    assert not hit.payload  # None (or empty): nothing fetched
    (hit,) = store.query(USERS, Query(vectors[2], 1, with_payload=("no_such_key",)))
    assert not hit.payload


def test_query_batch_equals_single_queries_in_one_call(store: Store) -> None:
    points, vectors = make_users(80, seed=8)
    store.upsert(USERS, points)
    qs = [
        Query(vectors[0], 5),
        Query(vectors[1], 3, filter=FILTERS["keyword"], with_payload=("gender",)),
        Query(vectors[2], 7, filter=FILTERS["combined"], with_vectors=True),
        Query(vectors[3], 4, filter=Filter(must=(HasId.of([p.id for p in points[:10]]),))),
    ]
    singles = [store.query(USERS, q) for q in qs]
    calls: list[str] = []
    _count_backend_calls(store, calls)
    batch = store.query_batch(USERS, qs)
    assert len(calls) == 1, f"query_batch made {len(calls)} backend calls: {calls}"
    assert len(batch) == len(qs)
    for b, s, q in zip(batch, singles, qs, strict=True):
        assert [p.id for p in b] == [p.id for p in s]
        np.testing.assert_allclose([p.score for p in b], [p.score for p in s], atol=1e-6)
        assert [p.payload for p in b] == [p.payload for p in s]
        assert (b[0].vector is not None) == q.with_vectors
    assert store.query_batch(USERS, []) == []


def test_query_hits_are_the_query_batch_ids_and_scores(store: Store) -> None:
    points, vectors = make_users(80, seed=9)
    store.upsert(USERS, points)
    qs = [
        Query(vectors[0], 30, filter=FILTERS["combined"], with_payload=False),
        Query(vectors[1], 12, filter=FILTERS["keyword"], with_payload=("gender",), with_vectors=True),
        Query(vectors[2], 50, exact=True),
    ]
    want = [store.query(USERS, q) for q in qs]
    for one, w in zip(qs, want, strict=True):  # one query, then all in one backend call
        (got,) = store.query_hits(USERS, [one])
        assert got.ids == [p.id for p in w] and got.scores.tolist() == [float(p.score) for p in w]
    calls: list[str] = []
    _count_backend_calls(store, calls)
    hits = store.query_hits(USERS, qs)
    assert len(calls) == 1, f"query_hits made {len(calls)} backend calls: {calls}"
    for h, w in zip(hits, want, strict=True):
        assert len(h) == len(w) > 0
        assert h.ids == [p.id for p in w]
        assert h.scores.dtype == np.float64 and h.scores.tolist() == [float(p.score) for p in w]
    assert store.query_hits(USERS, []) == []


class _CallCounter:
    """Wraps a backend object and records every method called on it (to check round trips)."""

    def __init__(self, inner: Any, calls: list[str]) -> None:
        self._inner = inner
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self._calls.append(name)
            return attr(*args, **kwargs)

        return wrapper


def _count_backend_calls(store: Store, calls: list[str]) -> None:
    if isinstance(store, QdrantClientStore):
        store._client = _CallCounter(store._client, calls)  # type: ignore[assignment]
    else:
        shards = store._shards  # type: ignore[attr-defined]
        shards[USERS] = _CallCounter(shards[USERS], calls)


# -- persistence ------------------------------------------------------------------------------------------


def test_points_indexes_and_meta_survive_close_and_reopen(store_factory: StoreFactory) -> None:
    s = store_factory.open()
    s.setup("enc-keep", DIM)
    points, vectors = make_users(40, seed=9)
    s.upsert(USERS, points)
    photo = Point(str(uuid.uuid4()), vectors[0], {"user_id": "user_000", "age": 30})
    s.upsert(PHOTOS, [photo])
    s.delete(USERS, [points[-1].id])
    s.optimize()
    s.close()
    s.close()  # idempotent

    r = store_factory.open()
    info = r.info()
    assert info is not None and (info.encoder_id, info.dim) == ("enc-keep", DIM)
    assert r.count(USERS) == 39 and r.count(PHOTOS) == 1
    assert r.retrieve(USERS, [points[-1].id]) == []
    assert_same_ranking(
        r.query(USERS, Query(vectors[5], 10, filter=FILTERS["list_payload"])),
        brute_force(points[:-1], vectors[:-1], vectors[5], FILTERS["list_payload"], 10),
    )
    if store_factory.backend != "local":  # local mode has no payload indexes to keep
        assert r.payload_indexes(USERS) == USER_INDEXES  # type: ignore[attr-defined]
    with pytest.raises(EncoderMismatch):
        r.setup("enc-new", DIM)


def test_closed_store_refuses_calls(store_factory: StoreFactory) -> None:
    s = store_factory.open()
    s.setup("enc", DIM)
    s.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        s.count(USERS)


# -- backend-specific edges of the contract ----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_refused_server_connection_names_the_url_not_the_key() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    secret = "sk-" + uuid.uuid4().hex
    settings = Settings(qdrant_url=f"http://127.0.0.1:{port}", qdrant_api_key=SecretStr(secret), qdrant_timeout_s=2)
    with pytest.raises(StoreUnavailable) as err:
        QdrantClientStore.connect(settings)
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message and "does not answer" in message
    assert secret not in message and secret not in repr(err.value.__cause__)


# -- congruence: Edge against qdrant-client's local mode ----------------------------------------------------


def test_edge_and_local_give_the_same_results(tmp_path: Path) -> None:
    """Same random data and queries on both embedded backends: same top results within 1e-4.

    Exact search on both; and on Edge after ``optimize()`` the default (index) search must still agree on
    this small collection, where Edge keeps the plain index.
    """
    from engine.store.edge import EdgeStore

    points, vectors = make_users(200, seed=11)
    photos_rng = np.random.default_rng(12)
    photo_vecs = unit_rows(photos_rng, 400)
    photos = [
        Point(
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"photo-{i}")),
            photo_vecs[i],
            {"user_id": points[i % 200].payload["user_id"], "age": points[i % 200].payload["age"]},
        )
        for i in range(400)
    ]
    edge = EdgeStore.open(Settings(store_path=tmp_path / "edge", store_backend="edge"))
    local = QdrantClientStore.embedded(Settings(store_path=tmp_path / "local", store_backend="local"))
    try:
        for s in (edge, local):
            s.setup("enc-cong", DIM)
            for i in range(0, 200, 64):
                s.upsert(USERS, points[i : i + 64])
            s.upsert(PHOTOS, photos)
        edge.optimize()
        queries = unit_rows(np.random.default_rng(13), len(FILTERS))
        filters = list(FILTERS.values())
        for exact in (True, False):
            batch = [Query(q, 20, filter=filters[j % len(filters)], exact=exact) for j, q in enumerate(queries)]
            for e, lo in zip(edge.query_batch(USERS, batch), local.query_batch(USERS, batch), strict=True):
                assert_same_ranking(e, [(p.id, p.score) for p in lo])
            photo_q = [Query(q, 15, filter=Filter(must=(Range("age", gte=30),)), exact=exact) for q in queries]
            for e, lo in zip(edge.query_batch(PHOTOS, photo_q), local.query_batch(PHOTOS, photo_q), strict=True):
                assert_same_ranking(e, [(p.id, p.score) for p in lo])
        for flt in filters:
            assert edge.count(USERS, flt) == local.count(USERS, flt)
            assert {p.id for p in edge.scroll(USERS, flt)} == {p.id for p in local.scroll(USERS, flt)}
    finally:
        edge.close()
        local.close()


def test_edge_hnsw_after_optimize_agrees_with_exact_search(tmp_path: Path) -> None:
    """With HNSW really built (a low indexing threshold), filtered index search finds what exact search
    finds (high overlap, identical scores for the ids it returns), and the index survives a reopen."""
    from engine.store.edge import EdgeStore

    settings = Settings(store_path=tmp_path / "edge", store_backend="edge")
    points, vectors = make_users(1200, seed=21)
    with EdgeStore.open(settings, indexing_threshold_kb=10) as edge:
        edge.setup("enc-hnsw", DIM)
        for i in range(0, 1200, 400):
            edge.upsert(USERS, points[i : i + 500])
        edge.optimize()
        assert edge._shards[USERS].info().indexed_vectors_count == 1200  # HNSW is there
    with EdgeStore.open(settings) as edge:
        assert edge._shards[USERS].info().indexed_vectors_count == 1200
        queries = unit_rows(np.random.default_rng(22), 12)
        all_scores = queries @ vectors.T
        filters = [FILTERS["none"], FILTERS["keyword"], FILTERS["integer_range"], FILTERS["list_payload"]]
        overlaps = []
        for j, q in enumerate(queries):
            flt = filters[j % len(filters)]
            approx, exact = edge.query_batch(
                USERS, [Query(q, 10, filter=flt, with_payload=False), Query(q, 10, filter=flt, exact=True)]
            )
            assert_same_ranking(exact, brute_force(points, vectors, q, flt, 10))
            index = {p.id: k for k, p in enumerate(points)}
            for p in approx:
                assert p.score == pytest.approx(float(all_scores[j, index[p.id]]), abs=1e-4)
            overlaps.append(len({p.id for p in approx} & {p.id for p in exact}) / 10)
        assert np.mean(overlaps) >= 0.9, overlaps


class _Scored:
    """Stands in for the Edge bindings' scored point: an ``id`` and a repr."""

    def __init__(self, point_id: Any, text: str) -> None:
        self.id = point_id
        self._text = text

    def __repr__(self) -> str:
        return self._text


def test_edge_hit_ids_come_from_the_repr_and_fall_back_to_the_id(tmp_path: Path) -> None:
    """``query_hits`` on Edge reads ids from the bindings' repr (no ``uuid.UUID`` per point): the pinned
    bindings must format it as expected (else it silently takes the slow path), and anything of another
    shape (checked on the first and last point: this store writes UUID ids only) is read through ``.id``, for
    every point of the answer."""
    from engine.store.edge import _REPR_HEAD, EdgeStore, _hit_ids

    shown, other = uuid.uuid4(), uuid.uuid4()
    lean = _Scored(other, f'ScoredPoint(id="{shown}", version=3, score=0.5, vector=None)')
    assert _hit_ids([lean]) == [str(shown)]  # the repr's id, not ``.id``
    odd = _Scored(7, "ScoredPoint(id=7, version=3, score=0.5)")
    assert _hit_ids([lean, odd]) == [str(other), "7"] and _hit_ids([odd, lean]) == ["7", str(other)]
    assert _hit_ids([_Scored("x", 'ScoredPoint(id="x")')]) == ["x"]  # too short for a UUID
    assert _hit_ids([]) == []

    settings = Settings(store_path=tmp_path / "edge", store_backend="edge")
    points, vectors = make_users(50, seed=23)
    edge = EdgeStore.open(settings)
    try:
        edge.setup("enc-hits", DIM)
        edge.upsert(USERS, points)
        raw = edge._shards[USERS].query(edge._request(Query(vectors[0], 40, with_payload=False)))
        assert len(raw) == 40 and all(repr(p).startswith(_REPR_HEAD) for p in raw)
        assert _hit_ids(raw) == [str(p.id) for p in raw]
    finally:
        edge.close()


# -- the refresh cache's bookkeeping (engine/store/cache.py) ---------------------------------------------


def test_cache_token_journal_and_drop(store_factory: StoreFactory) -> None:
    """Embedded backends record a cache token in META and journal every users write before it happens;
    a deletion drops the token and the files. A server keeps no cache: the calls do nothing there."""
    from engine.store.cache import journal_path

    s = store_factory.open()
    s.setup("enc-cache", DIM)
    points, vectors = make_users(6, seed=4)
    folder = s.cache_folder()
    if folder is None:  # a server: no local folder, nothing is ever trusted
        s.set_cache_token("t1")
        assert s.cache_token() is None
        s.upsert(USERS, points)
        return
    assert s.cache_token() is None
    s.upsert(USERS, points[:2])  # no token: nothing to journal
    folder.mkdir(parents=True, exist_ok=True)
    journal_path(folder, "t1").touch()
    s.set_cache_token("t1")
    assert s.cache_token() == "t1"
    s.upsert(USERS, points[2:4])
    s.set_payload(USERS, {points[0].id: {"note": 1}})
    s.upsert(PHOTOS, [Point(str(uuid.uuid4()), vectors[0], {"user_id": "user_000"})])  # not a users write
    assert journal_path(folder, "t1").read_text().split() == [points[2].id, points[3].id, points[0].id]
    s.close()
    r = store_factory.open()
    assert r.cache_token() == "t1"  # kept in META across a reopen
    r.setup("enc-cache", DIM)  # and across the setup every ingestion runs
    assert r.cache_token() == "t1"
    r.delete(USERS, [points[3].id])
    assert r.cache_token() is None and not folder.exists()
    folder.mkdir()
    journal_path(folder, "t2").touch()
    r.set_cache_token("t2")
    r.delete_by_filter(USERS, Filter(must=(MatchAny("gender", GENDERS),)))
    assert r.cache_token() is None and not folder.exists()
    folder.mkdir()
    journal_path(folder, "t3").touch()
    r.set_cache_token("t3")
    journal_path(folder, "t3").unlink()  # a lost journal: the next write drops the cache instead
    r.upsert(USERS, points[4:5])
    assert r.cache_token() is None
