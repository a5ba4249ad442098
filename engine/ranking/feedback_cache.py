"""A per-process copy of what ``recommend()`` reads of each asker's logged feedback, never stale.

``engine.feedback.around(store, user)`` costs two filtered scrolls of the ``feedback`` collection per call
(7.7-19 ms of a 12-30 ms call at 10,000 users and 300,000 decisions, cProfile under load). Between two writes
to that collection its answer cannot change, so this module keeps it per store object and per user.

Freshness is keyed on ``Store.write_count(FEEDBACK)``, which counts every write call this store object makes
to the collection, whatever code makes it (``record_feedback``, ``delete_feedback_of``, the simulator's
``clear_feedback``, a ``setup(rebuild=True)``): an embedded store holds its folder's lock, so no other
process can write behind it. When the count moved, the whole copy is dropped, except after
``record_feedback``'s own writes (:func:`forget_users`), which drop only the users whose answer changed.
Where ``write_count`` is None (a Qdrant server, written by other processes too) nothing is cached and every
call reads the store, as before. (The served model's version point, ``engine.learned.served``, would serve the
same purpose across processes at one ``retrieve`` per call; the embedded store needs none.)
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.feedback import around
from engine.schema import FEEDBACK
from engine.store.base import Store

log = logging.getLogger(__name__)

MAX_USERS = 200_000  # entries per store (each a few dozen decisions); past it the copy starts again empty


@dataclass
class _Copy:
    writes: int  # the store's write count on FEEDBACK the entries are valid for
    users: dict[str, tuple[dict[str, str], frozenset[str]]] = field(default_factory=dict)


_CACHE: weakref.WeakKeyDictionary[Store, _Copy] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def around_cached(store: Store, user_id: str) -> tuple[dict[str, str], set[str]]:
    """``engine.feedback.around(store, user_id)`` from this process's copy when it is current (see the module
    docstring), else read and kept. Returns fresh containers (the caller may change them).
    Raises ``StoreUnavailable``."""
    writes = store.write_count(FEEDBACK)
    if writes is None:
        return around(store, user_id)
    with _LOCK:
        copy = _CACHE.get(store)
        if copy is None or copy.writes != writes:
            copy = _Copy(writes)
            _CACHE[store] = copy
        hit = copy.users.get(user_id)
    if hit is not None:
        return dict(hit[0]), set(hit[1])
    about, blocked = around(store, user_id)
    with _LOCK:
        # Kept only if nothing was written while it was read (the count moves after each write returns).
        if _CACHE.get(store) is copy and store.write_count(FEEDBACK) == writes:
            if len(copy.users) >= MAX_USERS:
                copy.users.clear()
            copy.users[user_id] = (dict(about), frozenset(blocked))
    return about, blocked


def forget_users(store: Store, user_ids: Iterable[str], writes_before: int | None, own_writes: int) -> None:
    """After ``record_feedback`` made ``own_writes`` write calls to FEEDBACK, starting at count
    ``writes_before``: drop the entries of ``user_ids`` (every viewer and candidate of an event that was
    written) and keep the others, if those calls are the only writes since the copy was made; otherwise the
    next read drops the whole copy (the count moved by more)."""
    if writes_before is None:
        return
    with _LOCK:
        copy = _CACHE.get(store)
        now = store.write_count(FEEDBACK)
        if copy is None or copy.writes != writes_before or now != writes_before + own_writes:
            return
        for u in user_ids:
            copy.users.pop(u, None)
        copy.writes = now


def forget(store: Store) -> None:
    """Drop this process's copy for ``store`` (tests; the write count makes it unnecessary otherwise)."""
    with _LOCK:
        _CACHE.pop(store, None)


__all__ = ["around_cached", "forget", "forget_users"]
