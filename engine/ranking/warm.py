"""Fill a serving process's copies in bulk before the first ``recommend()`` (``warm``).

Without it, each asker's first call in a process reads what no copy holds yet, one asker at a time: their
logged feedback (``engine.feedback.around``: two filtered scrolls, ~3 ms at 30 decisions, each decision's
payload read at random), their users point, the vectors of the candidates not seen yet (the unit rows: ~50 us
per vector crossing the Edge bindings), the top ``k``'s photo ids and their photos' vectors. Measured at 10,000
users (docs/benchmarks.md): a first call cost 2.6-2.9x Qdrant's exact filtered query, against ~2x for a
returning asker. ``warm`` reads the same data in bulk (one scroll each of the users, the feedback log and the
photos) and fills the same copies, keyed on the same write counts, so they can never be stale either
(``engine.ranking.user_copies``, ``engine.ranking.feedback_cache``); where a store allows no copy
(``write_count`` is None) or a collection is larger than the limits, it fills nothing and ``recommend()``
reads as before. What it fills is what the calls would have read, so rankings do not change.

A serving process calls it once after opening the store. Cost at 10,000 users, 30,000 photos and 300,000
decisions (docs/benchmarks.md): seconds of wall time (the decisions are most of it, ~15-40 us each depending on
the load), and memory for every user's vector twice (raw and unit length), every photo's vector and every
user's logged decisions: +297 MB resident there (not split by part).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from engine.learned.served import served_model
from engine.ranking.feedback_cache import fill_all
from engine.ranking.user_copies import fill_users, fill_vectors
from engine.schema import PHOTOS
from engine.settings import Settings
from engine.store.base import Store

log = logging.getLogger(__name__)

MAX_USERS = 100_000  # users points read in bulk (~4 KB each kept: raw and unit vectors at 512-d, payload)
MAX_EVENTS = 2_000_000  # logged decisions read in bulk (~30 s here; a few hundred bytes each kept)
MAX_PHOTOS = 100_000  # photos' vectors read in bulk (2 KB each kept at 512-d; user_copies.MAX_VECTORS)


@dataclass(frozen=True)
class WarmReport:
    """What ``warm`` filled: users points, decisions and photos' vectors read (None: nothing kept), wall
    seconds."""

    users: int | None
    events: int | None
    photos: int | None
    seconds: float


def warm(
    store: Store,
    settings: Settings,
    *,
    max_users: int = MAX_USERS,
    max_events: int = MAX_EVENTS,
    max_photos: int = MAX_PHOTOS,
) -> WarmReport:
    """Fill this process's copies for ``store`` in bulk (module docstring): the served model (when
    ``recommend.model`` is "learned" and one is stored), every users point with its unit row and photo ids,
    every logged decision and, on the learned path (which picks the best photo of the top ``k`` in numpy), every
    photo's vector. Raises ``StoreUnavailable``."""
    t0 = time.perf_counter()
    sm = served_model(store) if settings.recommend.model == "learned" else None
    users = fill_users(store, sm, max_users)
    events = fill_all(store, max_events)
    photos = fill_vectors(store, PHOTOS, max_photos) if sm is not None else None
    report = WarmReport(users, events, photos, round(time.perf_counter() - t0, 3))
    log.info("warm: %s users, %s decisions, %s photos read in %.2f s", users, events, photos, report.seconds)
    return report


__all__ = ["MAX_EVENTS", "MAX_PHOTOS", "MAX_USERS", "WarmReport", "warm"]
