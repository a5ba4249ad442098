"""The asker of ``recommend()``: their point, taste, photos, logged feedback and, with a learned model, their
row in the served copy (``engine.learned.served``), loaded for many askers in a few store calls."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np

from engine.errors import InvalidInput, NoUserVector, UserNotFound
from engine.filters import Filter, MatchAny
from engine.learned.served import ServedModel, served_model
from engine.likes import liked_vectors
from engine.ranking.feedback_cache import around_cached
from engine.ranking.rerank import (
    l2_normalize,
    taste_vector,
)
from engine.ranking.user_copies import asker_points
from engine.reciprocity.blocks import Stats
from engine.reciprocity.blocks import stored as stored_stats
from engine.schema import (
    KTH_SIM,
    META,
    NO_PHOTOS_KIND,
    PHOTOS,
    TASTE,
    USER_ID,
    USERS,
    Profile,
    no_photos_point_id,
    photo_ids_of,
    usable_vector,
    user_point_id,
)
from engine.settings import Settings
from engine.store.base import Point, Store

log = logging.getLogger(__name__)


@dataclass
class Asker:
    point_id: str
    profile: Profile
    vector: np.ndarray  # (d,) own mean vector
    taste: np.ndarray  # (d,) unit
    photo_vectors: np.ndarray  # (P, d), P may be 0
    kth_sim: float  # NaN when not computed yet
    # Logged feedback (engine.feedback): who decided what about the asker, and who is blocked either way.
    about: dict[str, str] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)
    # The learned preference model (engine.learned.rebuild), when one is stored and recommend.model is "learned":
    # its shared part, the served copy (engine.learned.served) and the asker's row in it (-1: not in the model).
    model: dict[str, Any] | None = None
    served: ServedModel | None = None
    row: int = -1
    pref_taste: np.ndarray | None = None
    vectors_kept: bool = False  # the candidates' vectors come from this process's copy (engine.ranking.user_copies)

    @property
    def taste_is_own(self) -> bool:
        return bool(np.allclose(self.taste, l2_normalize(self.vector), atol=1e-6))


def check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise InvalidInput(f"k: must be a positive integer, got {k!r}")


def stored_kth(payload: dict[str, Any], stats: Stats | None = None, point_id: str = "") -> float:
    """The user's stored ``kth_sim`` (``engine.reciprocity``), NaN when not computed yet: from the statistics'
    blocks ``stats`` where the store has them (``engine.reciprocity.blocks.stored``), else the payload."""
    if stats is not None:
        return float(stats.kth_of([point_id])[0])
    value = payload.get(KTH_SIM)
    return float(value) if isinstance(value, int | float) else math.nan


def _raise_missing(store: Store, user_id: str) -> NoReturn:
    """``NoUserVector`` if photos of ``user_id`` are stored but no user vector, else ``UserNotFound``.

    (Ingestion writes no users point for a user without a valid photo; photos whose vectors cancel out are
    the one way to have photos but no user vector.)
    """
    if store.count(PHOTOS, Filter(must=(MatchAny.of(USER_ID, [user_id]),))) > 0:
        raise NoUserVector(f"user {user_id!r} has photos stored but no user vector; nothing to match on")
    try:
        record = store.retrieve(META, [no_photos_point_id(user_id)])
    except InvalidInput:  # no META collection: a store never set up
        record = []
    if record and record[0].payload.get("kind") == NO_PHOTOS_KIND:
        why = ", ".join(record[0].payload.get("reasons") or []) or "none stored"
        raise NoUserVector(
            f"user {user_id!r} is in the metadata, but none of their photos was stored (rejected at the last "
            f"ingestion: {why}; see its report); fix or add photos and run the ingestion again"
        )
    raise UserNotFound(user_id)


def load_askers(
    store: Store,
    user_ids: Sequence[str],
    settings: Settings,
    likes: Sequence[str] | None = None,
    *,
    need_photos: bool = False,
) -> list[Asker]:
    """The askers' points and photos in two ``retrieve`` calls (plus one for ``likes``, when given); with a
    learned model the photos only when ``need_photos`` (the photo-only rerank reads them).

    Raises ``UserNotFound`` (first unknown id) or ``NoUserVector``.
    """
    points = asker_points(store, [user_point_id(u) for u in user_ids])  # this process's copy, or one retrieve
    by_id = {p.id: p for p in points}
    photo_ids: list[str] = []
    found: list[tuple[Point, np.ndarray]] = []
    for u in user_ids:
        p = by_id.get(user_point_id(u))
        if p is None:
            _raise_missing(store, u)
        own = usable_vector(p)
        if own is None:
            raise NoUserVector(f"user {u!r} has no vector (no valid photo was stored); nothing to match on")
        found.append((p, own))
        photo_ids.extend(photo_ids_of(p.payload))
    blend = settings.recommend.taste_blend
    explicit = liked_vectors(store, list(likes), strict=True) if likes else None
    # An explicit like history (likes=) asks for the photo taste of engine.likes, which the model does not use.
    sm = served_model(store) if settings.recommend.model == "learned" and likes is None else None
    # The asker's photos score the reverse direction of the photo-only rerank; the learned model does not
    # read them (one retrieve saved per call).
    if sm is not None and not need_photos:
        photo_ids = []
    photos = {q.id: q for q in store.retrieve(PHOTOS, photo_ids, with_vectors=True)} if photo_ids else {}
    kth_stats = stored_stats(store) if sm is None else None  # the learned path reads no kth_sim
    askers = []
    for u, (p, own) in zip(user_ids, found, strict=True):
        payload = p.payload or {}
        if likes is not None:  # an explicit history overrides the stored one, even when empty
            taste = taste_vector(own, explicit, blend)
        elif payload.get(TASTE):
            taste = l2_normalize(np.asarray(payload[TASTE], dtype=np.float32))
        else:
            taste = l2_normalize(own)
        pv = [usable_vector(photos[i]) for i in photo_ids_of(payload) if i in photos]
        kept = [v for v in pv if v is not None]
        askers.append(
            Asker(
                point_id=p.id,
                profile=Profile.from_payload(payload, where=f"user {u!r}"),
                vector=own,
                taste=taste,
                photo_vectors=np.stack(kept) if kept else np.zeros((0, own.shape[0]), np.float32),
                kth_sim=stored_kth(payload, kth_stats, p.id),
            )
        )
        if sm is not None:
            a = askers[-1]
            a.model, a.served, a.row = sm.shared, sm, int(sm.index.get(p.id, -1))
            a.vectors_kept = store.write_count(USERS) is not None
            pt = sm.query_taste(a.row)
            if pt is not None:
                t = l2_normalize(pt)
                if t.shape == own.shape and np.any(t):
                    a.pref_taste = t
        askers[-1].about, askers[-1].blocked = around_cached(store, u)  # this process's copy, or one read
    return askers
