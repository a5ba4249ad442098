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

:func:`fill_all` (called by ``engine.ranking.warm``) reads the whole log once, in one bulk scroll, and makes a
*complete* copy: every user's answer as of that write count, so that a user with no entry has no feedback and
an asker's first call reads nothing. ``around()`` costs ~3 ms per asker at 30 decisions each (the payload of
each decision is read at random: ~0.1 ms per point on Edge, measured), the bulk read ~15 us per decision. After
``record_feedback`` the users it touched are marked stale and read again one by one; any other write drops the
copy (then it is filled user by user, as without ``fill_all``).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.errors import InvalidInput
from engine.feedback import EXCLUDING, around
from engine.schema import FEEDBACK
from engine.store.base import Store

log = logging.getLogger(__name__)

MAX_USERS = 200_000  # entries per store (each a few dozen decisions); past it the copy starts again empty


@dataclass
class _Copy:
    writes: int  # the store's write count on FEEDBACK the entries are valid for
    users: dict[str, tuple[dict[str, str], frozenset[str]]] = field(default_factory=dict)
    # Made by fill_all: ``users`` holds every user with feedback at ``writes``, except those in ``stale``
    # (touched by record_feedback since: read again one by one); anyone else has none.
    complete: bool = False
    stale: set[str] = field(default_factory=set)


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
        none = hit is None and copy.complete and user_id not in copy.stale
    if none:
        return {}, set()
    if hit is not None:
        return dict(hit[0]), set(hit[1])
    about, blocked = around(store, user_id)
    with _LOCK:
        # Kept only if nothing was written while it was read (the count moves after each write returns).
        if _CACHE.get(store) is copy and store.write_count(FEEDBACK) == writes:
            if len(copy.users) >= MAX_USERS:
                copy.users.clear()
                copy.complete = False
            copy.users[user_id] = (dict(about), frozenset(blocked))
            copy.stale.discard(user_id)
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
            if copy.complete:
                copy.stale.add(u)
        copy.writes = now


def fill_all(store: Store, max_events: int) -> int | None:
    """Read the whole feedback log of ``store`` in one bulk scroll and keep a complete copy (see the module
    docstring). Returns the decisions read, or None where nothing is kept: no copy may be kept
    (``write_count`` is None), the log holds more than ``max_events`` decisions, or it was written meanwhile.
    Raises ``StoreUnavailable``."""
    writes = store.write_count(FEEDBACK)
    if writes is None:
        return None
    try:
        total = store.count(FEEDBACK)
    except InvalidInput:  # no feedback collection: nobody has any
        total = 0
    if total > max_events:
        return None
    about: dict[str, dict[str, str]] = {}
    blocked: dict[str, set[str]] = {}
    n = 0
    if total:
        keys = ("viewer_id", "candidate_id", "decision")
        for p in store.scroll_payload(FEEDBACK, keys, with_ids=False, batch_size=8192):
            v, c, d = str(p.payload["viewer_id"]), str(p.payload["candidate_id"]), str(p.payload["decision"])
            about.setdefault(c, {})[v] = d
            if d in EXCLUDING:  # for good, both ways (what around() returns for each of them)
                blocked.setdefault(c, set()).add(v)
                blocked.setdefault(v, set()).add(c)
            n += 1
    users = {u: (about.get(u, {}), frozenset(blocked.get(u, ()))) for u in about.keys() | blocked.keys()}
    if len(users) > MAX_USERS:
        return None
    with _LOCK:
        if store.write_count(FEEDBACK) != writes:  # written while it was read
            return None
        _CACHE[store] = _Copy(writes, users, complete=True)
    return n


def forget(store: Store) -> None:
    """Drop this process's copy for ``store`` (tests; the write count makes it unnecessary otherwise)."""
    with _LOCK:
        _CACHE.pop(store, None)


__all__ = ["around_cached", "fill_all", "forget", "forget_users"]
