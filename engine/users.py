"""Operations on stored users as a whole: delete every trace of one (an erasure request); store stats."""

from __future__ import annotations

import logging
from typing import Any

from engine.errors import InvalidInput
from engine.filters import Filter, HasId, MatchAny
from engine.schema import PHOTOS, USERS, user_point_id
from engine.store.base import Store

log = logging.getLogger(__name__)

# Every collection that holds points of a user, each with ``user_id`` in the payload.
USER_COLLECTIONS: tuple[str, ...] = (PHOTOS, USERS)


def delete_user(store: Store, user_id: str) -> int:
    """Remove every point of ``user_id`` in every collection (photos and the user's mean vector).

    Returns the number of points removed (0 if the user was not stored). Other users' payloads that were
    computed with this user in the population (e.g. reciprocity statistics) are refreshed by the next
    ingestion's ``engine.reciprocity.refresh``. Raises ``InvalidInput`` for an empty id, and
    ``StoreUnavailable`` if the store fails.
    """
    user_id = str(user_id).strip()
    if not user_id:
        raise InvalidInput("user_id: empty")
    # By payload and, for the user point, by its id too: a point written without a payload is still found.
    by_payload = MatchAny.of("user_id", [user_id])
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
    log.info("deleted user %s: %d points", user_id, removed)
    return removed


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
