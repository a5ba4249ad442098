"""A user's like history, kept in their own point of the ``users`` collection.

Two payload fields, written by :func:`record_likes` and refreshed by ``engine.reciprocity.full.refresh``:

* ``liked_ids``: the user ids this user liked, oldest first, the newest ``recommend.max_likes`` kept.
* ``taste``: the user's taste vector, ``normalize((1 - taste_blend) · own + taste_blend · mean(liked))``
  (``engine.ranking.rerank.taste_vector``) as a list of floats; present only when ``liked_ids`` is not empty.

Storing ``taste`` lets ``recommend()`` score the reverse direction s(B→A) with each candidate's own taste
from the one stage-1 query, without fetching the vectors of everyone each candidate liked. It is computed
with the ``taste_blend`` and vectors of the moment it was written; ``refresh`` recomputes it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from engine.errors import InvalidInput, NoUserVector, UserNotFound
from engine.ranking.rerank import taste_vector
from engine.schema import LIKED_IDS, TASTE, USER_ID, USERS, usable_vector, user_point_id
from engine.settings import Settings
from engine.store.base import Point, Store

log = logging.getLogger(__name__)



def liked_vectors(store: Store, liked_ids: Sequence[str], *, strict: bool) -> np.ndarray | None:
    """Mean vectors of the liked users, (m, d) float32, in one ``retrieve`` call; None if there are none.

    ``strict``: an id that is not stored raises ``UserNotFound`` (an explicit ``likes=`` argument);
    otherwise it is skipped (a stored history may name users deleted since).
    """
    if not liked_ids:
        return None
    points = store.retrieve(USERS, [user_point_id(u) for u in liked_ids], with_vectors=True)
    if strict and len(points) < len(set(liked_ids)):
        found = {str((p.payload or {}).get(USER_ID)) for p in points}
        missing = [u for u in liked_ids if u not in found]
        raise UserNotFound(missing[0])
    vecs = [v for v in (usable_vector(p) for p in points) if v is not None]
    return np.stack(vecs) if vecs else None


def taste_payload(own: np.ndarray, liked: np.ndarray | None, blend: float) -> list[float] | None:
    """The ``taste`` payload value for a user: their taste vector as floats, or None without likes."""
    if liked is None or len(liked) == 0:
        return None
    return [float(x) for x in taste_vector(own, liked, blend)]


def merged_likes(previous: Iterable[Any], new: Iterable[str], limit: int) -> list[str]:
    """``previous`` then ``new``, each id once (its latest position), keeping the newest ``limit``."""
    out: list[str] = []
    for u in (*[str(x) for x in previous], *[str(x) for x in new]):
        if u in out:
            out.remove(u)
        out.append(u)
    return out[-limit:] if limit > 0 else []


def record_likes(
    store: Store, user_id: str, liked_ids: Iterable[str], *, settings: Settings, replace: bool = False
) -> list[str]:
    """Add ``liked_ids`` to ``user_id``'s stored like history (or replace it) and update their ``taste``.

    The user's own reciprocity statistics are recomputed at once (``engine.reciprocity.full.refresh_user``).
    Returns the stored history. Raises ``UserNotFound`` for an unknown user (the asker or a liked one),
    ``NoUserVector`` if the user has no vector, ``InvalidInput`` if a user likes themselves.
    """
    liked = [str(u) for u in liked_ids]
    if user_id in liked:
        raise InvalidInput(f"liked_ids: user {user_id!r} cannot like themselves")
    points = store.retrieve(USERS, [user_point_id(user_id)], with_vectors=True)
    if not points:
        raise UserNotFound(user_id)
    point = points[0]
    own = usable_vector(point)
    if own is None:
        raise NoUserVector(f"user {user_id!r} has no vector (no valid photo was stored)")
    payload = dict(point.payload or {})
    previous = [] if replace else list(payload.get(LIKED_IDS) or [])
    history = merged_likes(previous, liked, settings.recommend.max_likes)
    # Validate the new ids strictly; older ones may have been deleted since and are skipped.
    if liked:
        liked_vectors(store, liked, strict=True)
    vecs = liked_vectors(store, history, strict=False)
    payload[LIKED_IDS] = history
    taste = taste_payload(own, vecs, settings.recommend.taste_blend)
    if taste is None:
        payload.pop(TASTE, None)
    else:
        payload[TASTE] = taste
    store.upsert(USERS, [Point(id=point.id, vector=own, payload=payload)])
    # Their own list is ranked by the new taste: recompute their kth_sim (imported here: reciprocity
    # builds on this module's tastes).
    from engine.reciprocity.full import refresh_user

    refresh_user(store, settings, user_id)
    log.info("user %s: %d likes stored", user_id, len(history))
    return history
