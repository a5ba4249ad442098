"""Per-process copies of what ``recommend()`` reads from the users collection, keyed on
``Store.write_count(USERS)`` so that no write to the collection (a new photo, a profile change, a deletion, a
re-ingestion) leaves them stale; where that count is None (a Qdrant server, written by other processes too)
nothing is kept and the callers ask the store, as before.

* **Stage 1's second leg on the learned path, in numpy** (:func:`popular_leg`): the filtered query restricted
  to the model's most appealing users (``ServedModel.popular``, 500 users). Appeal is learned from received
  likes, not from photos, so a taste query alone could miss the people everyone likes; that leg scores at
  most a few hundred known points, so their stored vectors and filter payloads are kept here and the query is
  evaluated in numpy — the backend-neutral ``Filter`` (``engine.filters``: match-any on keywords or list
  payloads, integer ranges, id sets) and cosine scores — returning the ids and vectors the store would, best
  first. The copy is also keyed on the served model (id, generation, erasures: the popular set changes only
  with them). Scores are float32 dot products of unit vectors as the store computes them; candidates whose
  scores tie to the last bit may come in another order than the store's.
* **Vectors** (:func:`kept_vectors`): the users' vectors the learned path scores the photo signal with
  (cos(v_asker, v_B) for a few hundred candidates per call). Moving them with stage 1's results cost two
  thirds of a call (the bindings build a list of 512 floats per candidate: ~15 ms of ~25 ms at 10,000 users,
  cProfile); kept here, stage 1 asks for ids and scores only, and a user's vector crosses once per process.
  The same for the photos of the top ``k`` (keyed on ``write_count(PHOTOS)``): each one's best photo for the
  asker is the argmax of float32 dot products in numpy instead of one exact query on ``photos`` per call
  (two photos of one user whose scores tie to the last bit may be picked the other way round).
* **Unit rows** (:func:`unit_rows`): the same users' vectors scaled to unit length, as one (N, d) float32
  matrix aligned with the served model's rows, so the photo signal of a few hundred candidates is one gather
  and one matrix-vector product instead of stacking and normalising a few hundred kept vectors per call
  (2.4 ms of a 14 ms call, docs/benchmarks.md). Keyed on the served model object and ``write_count(USERS)``;
  rows are read (payload-free) the first time a candidate needs them.
* **Askers' points** (:func:`asker_points`): the users point (payload and vector) each asker is loaded from,
  read once per user and kept: a returning asker costs no ``retrieve``.
* **Photo ids** (:func:`listed_photos`): the ``photo_ids`` of users returned by ``recommend()`` (the learned path
  reads them for the top ``k`` only, to pick each one's best photo), read once per user and kept.

:func:`fill_users` (``engine.ranking.warm``) fills all but the kept vectors for every user in one bulk scroll,
and :func:`fill_vectors` the photos' vectors, so that no asker's first call reads them one by one (a vector
crossing the Edge bindings costs ~50 us, a payload read at random ~0.1 ms: the unit rows of a first call's ~620
candidates were ~2.5-9 ms of it at 10,000 users).

The module is over 400 lines because each copy's freshness rule sits beside the copy it guards, and the bulk
fills (:func:`fill_users`, :func:`fill_vectors`) beside the copies they fill.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.filters import Condition, Filter, HasId, MatchAny, Range
from engine.learned.served import ServedModel
from engine.ranking.rerank import l2_normalize
from engine.schema import PHOTO_IDS, PHOTOS, USERS
from engine.store.base import Point, Query, ScoredPoint, Store

log = logging.getLogger(__name__)


@dataclass
class _Copy:
    key: tuple[str, int, int, int]  # model id, generation, erasures, users write count
    ids: list[str]  # point ids of the popular users that are stored
    index: dict[str, int]
    vectors: np.ndarray  # (n, d) float32, as the store holds them (unit)
    payloads: list[dict[str, Any]]
    columns: dict[tuple[str, str], Any]  # per (kind, key): a float column (ranges), or value -> row mask
    source: frozenset[str] = frozenset()  # the popular ids the copy was made of (``ServedModel.popular.ids``)
    id_array: np.ndarray | None = None  # ``ids`` as an object array (``popular_rows`` gathers from it)
    # ``popular_rows``: the served model (weak) and its row of each of ``ids``, made on first use.
    model_rows: tuple[weakref.ref[ServedModel], int, np.ndarray] | None = None


_CACHE: weakref.WeakKeyDictionary[Store, _Copy] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _load(store: Store, sm: ServedModel, key: tuple[str, int, int, int]) -> _Copy:
    return _popular_copy(store.retrieve(USERS, sorted(sm.popular.ids), with_vectors=True), sm, key)


def _popular_copy(stored: list[Point], sm: ServedModel, key: tuple[str, int, int, int]) -> _Copy:
    """The popular leg's copy from the users points ``stored`` (any order; those of popular users are kept)."""
    points = [p for p in stored if p.vector is not None and p.id in sm.popular.ids]
    points.sort(key=lambda p: p.id)
    dim = int(points[0].vector.shape[0]) if points and points[0].vector is not None else 0
    vectors = np.zeros((len(points), dim), np.float32)
    for i, p in enumerate(points):
        vectors[i] = np.asarray(p.vector, np.float32)  # as stored (unit: cosine), as stage 1 returns them
    ids = [p.id for p in points]
    payloads = [dict(p.payload or {}) for p in points]
    return _Copy(key, ids, {p: i for i, p in enumerate(ids)}, vectors, payloads, {}, sm.popular.ids)


def _values(payload: dict[str, Any], key: str) -> list[Any]:
    v = payload.get(key)
    if v is None:
        return []
    return list(v) if isinstance(v, list | tuple) else [v]


def _match_any(copy: _Copy, c: MatchAny) -> np.ndarray:
    masks = copy.columns.get(("any", c.key))
    if masks is None:  # value -> rows holding it (any element of a list payload)
        masks = {}
        for i, pl in enumerate(copy.payloads):
            for v in _values(pl, c.key):
                masks.setdefault(v, np.zeros(len(copy.ids), bool))[i] = True
        copy.columns[("any", c.key)] = masks
    out = np.zeros(len(copy.ids), bool)
    for v in c.values:
        m = masks.get(v)
        if m is not None:
            out |= m
    return out


def _range(copy: _Copy, c: Range) -> np.ndarray:
    col = copy.columns.get(("num", c.key))
    if col is None:  # NaN where the key is missing or not a number (the condition then fails, as in Qdrant)
        col = np.full(len(copy.ids), np.nan)
        for i, pl in enumerate(copy.payloads):
            v = pl.get(c.key)
            if isinstance(v, int | float) and not isinstance(v, bool):
                col[i] = float(v)
        copy.columns[("num", c.key)] = col
    with np.errstate(invalid="ignore"):
        ok = ~np.isnan(col)
        if c.gte is not None:
            ok &= col >= c.gte
        if c.lte is not None:
            ok &= col <= c.lte
    return ok


def _has_id(copy: _Copy, c: HasId) -> np.ndarray:
    if c.ids is copy.source:  # the popular set itself: every row of the copy
        return np.ones(len(copy.ids), bool)
    out = np.zeros(len(copy.ids), bool)
    rows = [copy.index[p] for p in c.ids if p in copy.index]
    out[rows] = True
    return out


def _condition(copy: _Copy, c: Condition) -> np.ndarray:
    if isinstance(c, MatchAny):
        return _match_any(copy, c)
    if isinstance(c, Range):
        return _range(copy, c)
    return _has_id(copy, c)


def _mask(copy: _Copy, flt: Filter | None) -> np.ndarray:
    ok = np.ones(len(copy.ids), bool)
    if flt is None:
        return ok
    for c in flt.must:
        ok &= _condition(copy, c)
    for c in flt.must_not:
        ok &= ~_condition(copy, c)
    return ok


def _popular_answer(store: Store, sm: ServedModel, query: Query) -> tuple[_Copy, np.ndarray, np.ndarray] | None:
    """The popular leg's copy, the rows of it that answer ``query`` best first and their float32 scores;
    None where no copy may be kept or the query asks for payloads (``popular_leg``)."""
    writes = store.write_count(USERS)
    if writes is None or query.with_payload or not sm.popular.ids:
        return None
    key = (sm.model_id, sm.gen, sm.erasures, writes)
    with _LOCK:
        copy = _CACHE.get(store)
    if copy is None or copy.key != key:
        copy = _load(store, sm, key)
        with _LOCK:
            if store.write_count(USERS) == writes:  # nothing written while it was read
                _CACHE[store] = copy
    idx = np.flatnonzero(_mask(copy, query.filter))
    if len(idx) == 0:
        return copy, idx, np.zeros(0, np.float32)
    scores = copy.vectors[idx] @ _unit(query.vector)
    order = np.argsort(-scores, kind="stable")[: query.limit]
    return copy, idx[order], scores[order]


def popular_leg(store: Store, sm: ServedModel, query: Query) -> list[ScoredPoint] | None:
    """``store.query(USERS, query)`` for a ``query`` whose filter restricts it to ``sm.popular`` (ids, scores
    and vectors; no payload), answered from this process's copy; None where no copy may be kept (see the
    module docstring) or the query asks for payloads. Raises ``StoreUnavailable`` (loading the copy)."""
    got = _popular_answer(store, sm, query)
    if got is None:
        return None
    copy, rows, scores = got
    vec = query.with_vectors
    return [
        ScoredPoint(copy.ids[r], float(s), None, copy.vectors[r].copy() if vec else None)
        for r, s in zip(rows.tolist(), scores.tolist(), strict=True)
    ]


def popular_rows(store: Store, sm: ServedModel, query: Query) -> tuple[list[str], np.ndarray] | None:
    """``popular_leg``'s answer as the learned stage 1 merges it: the point ids best first and their rows in
    ``sm`` ((n,) int64, -1: not in it), no ``ScoredPoint`` per user; None as ``popular_leg``."""
    got = _popular_answer(store, sm, query)
    if got is None:
        return None
    copy, rows, _ = got
    if copy.id_array is None:
        copy.id_array = np.array(copy.ids + [""], dtype=object)[:-1]  # the "" keeps it 1-d whatever the ids
    have = copy.model_rows
    if have is None or have[0]() is not sm or have[1] != len(sm.point_ids):
        have = (weakref.ref(sm), len(sm.point_ids), sm.rows(copy.ids))
        copy.model_rows = have  # one assignment: a reader sees the old triple or the new
    return copy.id_array[rows].tolist(), have[2][rows]


@dataclass
class _PhotoIds:
    writes: int
    users: dict[str, list[str]]


_PHOTO_IDS: weakref.WeakKeyDictionary[Store, _PhotoIds] = weakref.WeakKeyDictionary()
MAX_USERS = 200_000  # photo-id entries per store; past it the copy starts again empty


def listed_photos(store: Store, point_ids: list[str]) -> dict[str, dict[str, Any]]:
    """``point id -> {PHOTO_IDS: [...]}`` of the users points ``point_ids`` (those stored), from this
    process's copy where it has them, the others in one ``retrieve`` (the whole payload, as before, where no
    copy may be kept). Raises ``StoreUnavailable``."""
    writes = store.write_count(USERS)
    if writes is None:
        return {p.id: p.payload for p in store.retrieve(USERS, point_ids)}
    out: dict[str, dict[str, Any]] = {}
    with _LOCK:
        copy = _PHOTO_IDS.get(store)
        if copy is None or copy.writes != writes:
            copy = _PhotoIds(writes, {})
            _PHOTO_IDS[store] = copy
        for pid in point_ids:
            have = copy.users.get(pid)
            if have is not None:
                out[pid] = {PHOTO_IDS: list(have)}
    need = [p for p in point_ids if p not in out]
    if need:
        got = {p.id: [str(x) for x in (p.payload or {}).get(PHOTO_IDS) or []] for p in store.retrieve(USERS, need)}
        with _LOCK:
            keep = _PHOTO_IDS.get(store) is copy and store.write_count(USERS) == writes
            if keep and len(copy.users) + len(got) > MAX_USERS:
                copy.users.clear()
            for pid, ph in got.items():
                out[pid] = {PHOTO_IDS: list(ph)}
                if keep:
                    copy.users[pid] = ph
    return out


@dataclass
class _Vectors:
    writes: int
    points: dict[str, np.ndarray]


_VECTORS: dict[str, weakref.WeakKeyDictionary[Store, _Vectors]] = {
    USERS: weakref.WeakKeyDictionary(),
    PHOTOS: weakref.WeakKeyDictionary(),
}
MAX_VECTORS = 100_000  # vectors per store and collection (~200 MB at 512-d); past it the copy starts again empty


def kept_vectors(store: Store, collection: str, point_ids: list[str]) -> dict[str, np.ndarray] | None:
    """``point id -> vector`` (float32, as stored) of the points ``point_ids`` of ``collection`` (``USERS`` or
    ``PHOTOS``; those stored), from this process's copy where it has them, the others in one payload-free
    read (``Store.retrieve_vectors``) and kept, keyed on ``Store.write_count(collection)``; None where no copy
    may be kept (the caller then asks the store as before). Raises ``StoreUnavailable``."""
    writes = store.write_count(collection)
    if writes is None:
        return None
    copies = _VECTORS[collection]
    out: dict[str, np.ndarray] = {}
    with _LOCK:
        copy = copies.get(store)
        if copy is None or copy.writes != writes:
            copy = _Vectors(writes, {})
            copies[store] = copy
        get = copy.points.get
        for pid in point_ids:
            v = get(pid)
            if v is not None:
                out[pid] = v
    need = [p for p in point_ids if p not in out]
    if need:
        got = store.retrieve_vectors(collection, need)
        with _LOCK:
            if copies.get(store) is copy and store.write_count(collection) == writes:
                if len(copy.points) + len(got) > MAX_VECTORS:
                    copy.points.clear()
                copy.points.update(got)
        out.update(got)
    return out


@dataclass
class _Points:
    writes: int
    points: dict[str, Point]


_POINTS: weakref.WeakKeyDictionary[Store, _Points] = weakref.WeakKeyDictionary()
MAX_POINTS = 200_000  # askers' points per store; past it the copy starts again empty


def asker_points(store: Store, point_ids: list[str]) -> list[Point]:
    """``store.retrieve(USERS, point_ids, with_vectors=True)`` (the points stored, any order), from this
    process's copy keyed on ``write_count(USERS)`` where it has them, the others in one ``retrieve`` and kept.
    Returns copies (payload dict and vector): the caller may change them. Raises ``StoreUnavailable``."""
    writes = store.write_count(USERS)
    if writes is None:
        return store.retrieve(USERS, point_ids, with_vectors=True)
    out: list[Point] = []
    with _LOCK:
        copy = _POINTS.get(store)
        if copy is None or copy.writes != writes:
            copy = _Points(writes, {})
            _POINTS[store] = copy
        have = [copy.points.get(p) for p in point_ids]
    need = [p for p, h in zip(point_ids, have, strict=True) if h is None]
    got = store.retrieve(USERS, need, with_vectors=True) if need else []
    if got:
        with _LOCK:
            if _POINTS.get(store) is copy and store.write_count(USERS) == writes:
                if len(copy.points) + len(got) > MAX_POINTS:
                    copy.points.clear()
                for p in got:
                    copy.points[p.id] = Point(p.id, None if p.vector is None else p.vector.copy(), dict(p.payload))
    for p in [h for h in have if h is not None] + got:
        out.append(Point(p.id, None if p.vector is None else p.vector.copy(), dict(p.payload)))
    return out


@dataclass
class _Units:
    model: weakref.ref[ServedModel]  # the served copy whose rows the matrix is aligned with
    writes: int  # the store's write count on USERS the rows are valid for
    rows: np.ndarray  # (N, d) float32: l2_normalize of each user's stored vector (zero: none stored, or not read)
    have: np.ndarray  # (N,) bool: the row was read


_UNITS: weakref.WeakKeyDictionary[Store, _Units] = weakref.WeakKeyDictionary()
MAX_UNIT_BYTES = 1 << 30  # past this size (500,000 users at 512-d) no matrix is kept: the caller reads as before


def _normalised(got: dict[str, np.ndarray], ids: list[str], dim: int) -> np.ndarray:
    """(len(ids), dim) float32: ``l2_normalize`` of each id's vector in ``got`` (a zero row where none is there
    or its shape is not ``(dim,)``), row by row as ``l2_normalize`` scales a stacked block."""
    out = np.zeros((len(ids), dim), np.float32)
    for i, p in enumerate(ids):
        v = got.get(p)
        if v is not None and v.shape == (dim,):
            out[i] = v
    return l2_normalize(out)


def unit_rows(store: Store, sm: ServedModel, point_ids: list[str], rows: np.ndarray, dim: int) -> np.ndarray | None:
    """(n, dim) float32: ``l2_normalize`` of the stored vectors of the users points ``point_ids`` (rows of the
    served model ``rows``, -1 for users not in it; a zero row for a point with no vector of ``dim``), from this
    process's matrix (see the module docstring), the rows not read yet in one payload-free read
    (``Store.retrieve_vectors``). Bit for bit what stacking their kept vectors and normalising the block gives.
    None where no copy may be kept (``write_count`` is None) or the matrix would be too large.
    Raises ``StoreUnavailable``."""
    writes = store.write_count(USERS)
    n_model = len(sm.point_ids)
    if writes is None or n_model * dim * 4 > MAX_UNIT_BYTES:
        return None
    rows = np.asarray(rows, np.int64)
    with _LOCK:
        copy = _UNITS.get(store)
        if copy is None or copy.model() is not sm or copy.writes != writes or copy.rows.shape[1] != dim:
            copy = _Units(weakref.ref(sm), writes, np.zeros((n_model, dim), np.float32), np.zeros(n_model, bool))
            _UNITS[store] = copy
        elif copy.rows.shape[0] < n_model:  # an incremental update appended users to the model
            grow = n_model - copy.rows.shape[0]
            copy.rows = np.vstack([copy.rows, np.zeros((grow, dim), np.float32)])
            copy.have = np.concatenate([copy.have, np.zeros(grow, bool)])
        inside = rows >= 0
        if inside.all():  # the usual case: every candidate is in the model
            out = copy.rows.take(rows, axis=0)
            todo = np.flatnonzero(~copy.have.take(rows))
        else:
            out = copy.rows[np.where(inside, rows, 0)]
            todo = np.flatnonzero(~inside | ~copy.have[np.maximum(rows, 0)])
    if len(todo):
        need = [point_ids[int(i)] for i in todo]
        got = _normalised(store.retrieve_vectors(USERS, need), need, dim)
        out[todo] = got
        with _LOCK:
            if _UNITS.get(store) is copy and store.write_count(USERS) == writes:
                keep = inside[todo]
                at = rows[todo][keep]
                copy.rows[at] = got[keep]
                copy.have[at] = True
    return out


def fill_users(store: Store, sm: ServedModel | None, max_users: int) -> int | None:
    """Read every users point (vector and payload) in one bulk scroll and fill the askers' points, the photo
    ids and, with a served model ``sm``, its unit rows and the popular leg's copy (module docstring). Returns
    the points read, or None where nothing is kept: ``write_count(USERS)`` is None, the collection holds more
    than ``max_users`` points (or more than a copy may hold), or it was written meanwhile.
    Raises ``StoreUnavailable``."""
    writes = store.write_count(USERS)
    if writes is None:
        return None
    total = store.count(USERS)
    if total > min(max_users, MAX_POINTS, MAX_USERS):
        return None
    points = list(store.scroll(USERS, with_vectors=True, batch_size=2048))
    vectors = {p.id: p.vector for p in points if p.vector is not None}
    units: _Units | None = None
    if sm is not None and points:
        dim = next((int(v.shape[0]) for v in vectors.values()), 0)
        n_model = len(sm.point_ids)
        if dim and n_model * dim * 4 <= MAX_UNIT_BYTES:
            # Every row read: a zero row where no vector of ``dim`` is stored, as unit_rows keeps one.
            units = _Units(weakref.ref(sm), writes, _normalised(vectors, sm.point_ids, dim), np.ones(n_model, bool))
    with _LOCK:
        if store.write_count(USERS) != writes:  # written while it was read
            return None
        _POINTS[store] = _Points(
            writes, {p.id: Point(p.id, None if p.vector is None else p.vector.copy(), dict(p.payload)) for p in points}
        )
        _PHOTO_IDS[store] = _PhotoIds(
            writes, {p.id: [str(x) for x in (p.payload or {}).get(PHOTO_IDS) or []] for p in points}
        )
        if units is not None:
            _UNITS[store] = units
        if sm is not None and sm.popular.ids:
            _CACHE[store] = _popular_copy(points, sm, (sm.model_id, sm.gen, sm.erasures, writes))
    return len(points)


def fill_vectors(store: Store, collection: str, max_points: int) -> int | None:
    """Read every point's vector of ``collection`` (``USERS`` or ``PHOTOS``) in one payload-free bulk scroll
    into the copy :func:`kept_vectors` serves. Returns the vectors read, or None where nothing is kept (as
    :func:`fill_users`; at most ``min(max_points, MAX_VECTORS)``). Raises ``StoreUnavailable``."""
    writes = store.write_count(collection)
    if writes is None or store.count(collection) > min(max_points, MAX_VECTORS):
        return None
    got = {p.id: p.vector for p in store.scroll_payload(collection, (), with_vectors=True) if p.vector is not None}
    with _LOCK:
        if store.write_count(collection) != writes:
            return None
        _VECTORS[collection][store] = _Vectors(writes, got)
    return len(got)


def forget(store: Store) -> None:
    """Drop this process's copies for ``store`` (tests; the keys make it unnecessary otherwise)."""
    with _LOCK:
        _CACHE.pop(store, None)
        _PHOTO_IDS.pop(store, None)
        _UNITS.pop(store, None)
        _POINTS.pop(store, None)
        for copies in _VECTORS.values():
            copies.pop(store, None)


__all__ = [
    "asker_points",
    "fill_users",
    "fill_vectors",
    "forget",
    "kept_vectors",
    "listed_photos",
    "popular_rows",
    "popular_leg",
    "unit_rows",
]
