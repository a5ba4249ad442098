"""Operations on stored users as a whole: delete every trace of one (an erasure request); store stats."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from engine.errors import InvalidInput
from engine.feedback import delete_feedback_of
from engine.filters import Filter, HasId, MatchAny
from engine.likes import liked_vectors, taste_payload
from engine.reciprocity.full import departures, refresh_departed
from engine.schema import (
    LIKED_IDS,
    META,
    PHOTOS,
    TASTE,
    USER_ID,
    USERS,
    no_photos_point_id,
    usable_vector,
    user_point_id,
)
from engine.settings import Settings, load_settings
from engine.store.base import Point, Store

log = logging.getLogger(__name__)

# Every collection that holds points of a user, each with ``user_id`` in the payload.
USER_COLLECTIONS: tuple[str, ...] = (PHOTOS, USERS)


def delete_user(store: Store, user_id: str, *, settings: Settings | None = None) -> int:
    """Remove every point of ``user_id`` in every collection (photos and the user's mean vector), and the
    user from other users' like histories (``liked_ids``), whose ``taste`` is recomputed without them.

    Every feedback event the user gave or received (``engine.feedback``) is removed too, and counted.
    On the embedded Edge store the collections are then rewritten (``Store.finish_erasure``), so neither the
    id nor the vectors remain anywhere in the store's files. Returns the number of points removed (0 if the
    user was not stored). Other users' reciprocity statistics
    are refreshed at once (``engine.reciprocity.full.refresh_departed``: those who had the user in their top-K, and
    those whose taste changed). ``settings`` gives ``recommend`` (``taste_blend``, ``reciprocity_k``; from
    the environment if None). Raises ``InvalidInput`` for an empty id, and ``StoreUnavailable`` if the
    store fails.
    """
    _check_id(user_id)
    store.begin_erasure()  # from here, a kill leaves a rewrite owed that the next open completes
    removed, changed = _delete_one(store, user_id, settings)
    # Deleted points keep their bytes in an embedded store's files until rewritten: rewrite (Edge).
    store.finish_erasure(changed=changed)
    return removed


def delete_users(store: Store, user_ids: Sequence[str], *, settings: Settings | None = None) -> dict[str, int]:
    """``delete_user`` for each of ``user_ids`` with one rewrite of the store's files at the end (on Edge an
    erasure rewrites the whole store: batch them). Returns user id -> points removed (0: not stored)."""
    for uid in user_ids:
        _check_id(uid)
    store.begin_erasure()
    removed: dict[str, int] = {}
    changed = False
    for uid in dict.fromkeys(str(u).strip() for u in user_ids):  # each once, in the order given
        removed[uid], one_changed = _delete_one(store, uid, settings)
        changed = changed or one_changed
    store.finish_erasure(changed=changed)
    return removed


def _check_id(user_id: str) -> None:
    if not str(user_id).strip():
        raise InvalidInput("user_id: empty")


def _delete_one(store: Store, user_id: str, settings: Settings | None) -> tuple[int, bool]:
    """Delete one user's points (no rewrite of the files); returns (points removed, anything changed)."""
    user_id = str(user_id).strip()
    if not user_id:
        raise InvalidInput("user_id: empty")
    # By payload and, for the user point, by its id too: a point written without a payload is still found.
    by_payload = MatchAny.of(USER_ID, [user_id])
    settings = settings if settings is not None else load_settings()
    gone = departures(store, [user_id])  # what others' statistics were computed with, before it goes
    removed = 0
    for collection in USER_COLLECTIONS:
        flt = Filter(must=(by_payload,))
        if collection == USERS:
            ids = {user_point_id(user_id)}
            n = store.count(collection, flt) + store.count(
                collection, Filter(must=(HasId.of(ids),), must_not=(by_payload,))
            )
            if n:
                store.delete_by_filter(collection, flt)
                store.delete(collection, sorted(ids))
        else:
            n = store.count(collection, flt)
            if n:
                store.delete_by_filter(collection, flt)
        removed += n
    # The "valid metadata, every photo rejected" record names the user too.
    record = [no_photos_point_id(user_id)]
    if store.retrieve(META, record):
        store.delete(META, record)
        removed += 1
    scrubbed = _forget_likes_of(store, user_id, settings)
    events = delete_feedback_of(store, user_id)  # decisions the user gave and received, every direction
    removed += events
    # Always: the user's row must also leave the stored statistics' blocks (engine.reciprocity.blocks).
    refresh_departed(store, settings, gone, retasted=scrubbed, erased=[user_id])
    log.info(
        "deleted user %s: %d points (%d feedback events); removed from %d like histories",
        user_id, removed, events, len(scrubbed),
    )
    return removed, bool(removed or scrubbed)


def _forget_likes_of(store: Store, user_id: str, settings: Settings) -> list[str]:
    """Drop ``user_id`` from every stored like history and recompute those users' ``taste`` without them
    (a taste vector is partly the liked users' vectors: keeping it would keep a trace of the erased user).
    Returns the ids of the users whose points were rewritten."""
    blend = settings.recommend.taste_blend
    likers = list(store.scroll(USERS, Filter(must=(MatchAny.of(LIKED_IDS, [user_id]),)), with_vectors=True))
    points: list[Point] = []
    for p in likers:
        if p.vector is None:
            continue
        payload = dict(p.payload or {})
        history = [u for u in payload.get(LIKED_IDS) or [] if str(u) != user_id]
        payload[LIKED_IDS] = history
        own = usable_vector(p)
        taste = None if own is None else taste_payload(own, liked_vectors(store, history, strict=False), blend)
        if taste is None:
            payload.pop(TASTE, None)
        else:
            payload[TASTE] = taste
        points.append(Point(id=p.id, vector=p.vector, payload=payload))
    if points:
        store.upsert(USERS, points)
    return [str(p.payload.get(USER_ID)) for p in points]


def store_stats(store: Store) -> dict[str, Any]:
    """``{"photos": n, "users": n, "encoder_id": str | None, "dim": int | None}`` (counts 0 before setup)."""
    info = store.info()
    if info is None:
        return {"photos": 0, "users": 0, "encoder_id": None, "dim": None}
    return {
        "photos": store.count(PHOTOS),
        "users": store.count(USERS),
        "encoder_id": info.encoder_id,
        "dim": info.dim,
    }
