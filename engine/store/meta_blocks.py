"""Columnar blocks in ``matcher_meta``, and one in-process copy of them per store that is never stale.

What the preference model (``engine.learned.served``), the reciprocity statistics (``engine.reciprocity.blocks``)
and the decision log's columns (``engine.feedback_blocks``) share. Each keeps, in the ``META`` collection (1-d
placeholder vectors), block points whose payload holds numpy arrays as base64 (:func:`encode`), and one small
version point naming the blocks a reader needs, written last so a reader that sees it finds them all.

:class:`VersionedCopies` is the per-process copy: :meth:`VersionedCopies.get` returns it while nothing was
written to META since it was found current (``Store.write_count``: an embedded store's only writer is this
process), else reads the version point (one ``retrieve``), and then returns the copy when the version is the
same, brings it forward (the owner's ``advance``: missing patches) or loads it again (the owner's ``load``).
A version that moves three times while it is read is a race with a writer: the owner chooses whether that
raises ``StoreUnavailable`` or serves nothing this time.
"""

from __future__ import annotations

import base64
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from engine.errors import InvalidInput, StoreUnavailable
from engine.schema import META
from engine.store.base import Point, Store

log = logging.getLogger(__name__)

META_VECTOR = np.ones(1, dtype=np.float32)
WRITE_BATCH = 4  # block points per upsert / retrieve (bounded request size on a server)

V = TypeVar("V")  # a version: compared with ==
C = TypeVar("C")  # the in-memory copy


def encode(a: np.ndarray) -> dict[str, Any]:
    """A numpy array as JSON: ``{"dtype", "shape", "b64"}`` (little-endian bytes)."""
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode(d: dict[str, Any], what: str = "stored preference model") -> np.ndarray:
    """``encode``'s inverse; raises ``InvalidInput`` naming ``what`` on a malformed block."""
    try:
        raw = base64.b64decode(d["b64"])
        return np.frombuffer(raw, dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"{what}: malformed array block ({exc})") from None


def write_blocks(
    store: Store, points: list[tuple[str, dict[str, Any]]], *, key: str, extra: dict[str, Any] | None = None
) -> None:
    """Upsert block points ``(point id, block)`` into META, ``WRITE_BATCH`` at a time: each point's payload is
    ``{key: block}`` plus ``extra``. Raises ``StoreUnavailable`` from the store."""
    more = extra or {}
    for s in range(0, len(points), WRITE_BATCH):
        part = points[s : s + WRITE_BATCH]
        store.upsert(META, [Point(id=pid, vector=META_VECTOR, payload={key: b, **more}) for pid, b in part])


def read_blocks(store: Store, ids: list[str], *, key: str) -> list[dict[str, Any]] | None:
    """The blocks (payload ``key``) of these META point ids, in that order; None if one is missing (a writer
    replaced them)."""
    out: list[dict[str, Any]] = []
    for s in range(0, len(ids), WRITE_BATCH):
        part = ids[s : s + WRITE_BATCH]
        got = {p.id: (p.payload or {}).get(key) for p in store.retrieve(META, part)}
        for pid in part:
            b = got.get(pid)
            if not isinstance(b, dict):
                return None
            out.append(b)
    return out


def read_point(store: Store, point_id: str, key: str) -> dict[str, Any] | None:
    """The dict under ``key`` in one META point's payload; None when the point, the key or META is missing."""
    try:
        pts = store.retrieve(META, [point_id])
    except InvalidInput:  # a store without META
        return None
    v = (pts[0].payload or {}).get(key) if pts else None
    return v if isinstance(v, dict) else None


def write_point(store: Store, point_id: str, key: str, value: dict[str, Any]) -> None:
    """One META point whose payload is ``{key: value}`` (a version point, a shared part)."""
    store.upsert(META, [Point(id=point_id, vector=META_VECTOR, payload={key: value})])


@dataclass
class _Entry(Generic[V, C]):
    copy: C
    version: V
    meta_writes: int | None  # the store's write count on META when the copy was last found current


class VersionedCopies(Generic[V, C]):
    """This process's copy of one kind of stored blocks, per store (weakly keyed: a closed store's copy goes).

    ``read_version(store)``: the stored version, None when nothing is stored. ``load(store, version)``: the
    copy read whole, None when a block is missing (a writer replaced the set meanwhile). ``advance(store,
    copy, have, version)``: ``copy`` (at version ``have``) brought to ``version`` from the patches written
    since, or None when it cannot be (another set, an erasure, a missing patch: then ``load``). ``what``
    names the data in the race error; ``strict``: a race raises ``StoreUnavailable`` (else a warning and
    None)."""

    def __init__(
        self,
        what: str,
        read_version: Callable[[Store], V | None],
        load: Callable[[Store, V], C | None],
        advance: Callable[[Store, C, V, V], C | None],
        *,
        strict: bool,
    ) -> None:
        self.what = what
        self._read_version = read_version
        self._load = load
        self._advance = advance
        self._strict = strict
        self._copies: weakref.WeakKeyDictionary[Store, _Entry[V, C]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, store: Store) -> C | None:
        """The stored data, from this process's copy when it is current; None when nothing is stored.
        Raises ``StoreUnavailable`` (from the store, or on a race when ``strict``)."""
        writes = store.write_count(META)
        with self._lock:
            have = self._copies.get(store)
        # An embedded store is written only through this object: no META write since the last check, no new version.
        if have is not None and writes is not None and have.meta_writes == writes:
            return have.copy
        for _ in range(3):  # a writer replacing the blocks while we read them: read the new version again
            version = self._read_version(store)
            if version is None:
                self.forget(store)
                return None
            with self._lock:
                have = self._copies.get(store)
            if have is not None and have.version == version:
                have.meta_writes = writes
                return have.copy
            got = None if have is None else self._advance(store, have.copy, have.version, version)
            if got is None:
                got = self._load(store, version)
            if got is not None:
                with self._lock:
                    self._copies[store] = _Entry(got, version, writes)
                return got
        if self._strict:
            raise StoreUnavailable(f"the stored {self.what} changed three times while they were read")
        log.warning("the stored %s changed three times while it was read; serving without it this time", self.what)
        return None

    def install(self, store: Store, copy: C, version: V) -> None:
        """Make ``copy`` (just written as ``version`` by this process) the current one."""
        writes = store.write_count(META)
        with self._lock:
            self._copies[store] = _Entry(copy, version, writes)

    def peek(self, store: Store) -> tuple[C, V] | None:
        """This process's copy and its version as last seen, without checking the store (None: no copy)."""
        with self._lock:
            have = self._copies.get(store)
        return None if have is None else (have.copy, have.version)

    def forget(self, store: Store) -> None:
        """Drop this process's copy for ``store`` (tests; the version check makes it unnecessary otherwise)."""
        with self._lock:
            self._copies.pop(store, None)


__all__ = [
    "META_VECTOR",
    "VersionedCopies",
    "decode",
    "encode",
    "read_blocks",
    "read_point",
    "write_blocks",
    "write_point",
]
