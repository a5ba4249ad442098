"""Fill a serving process's copies in bulk before the first ``recommend()`` (``warm``).

Without it, each asker's first call in a process reads what no copy holds yet, one asker at a time: their
logged feedback (``engine.feedback.around``: two filtered scrolls, ~3 ms at 30 decisions, each decision's
payload read at random), their users point, the vectors of the candidates not seen yet (the unit rows: ~50 us
per vector crossing the Edge bindings) and the top ``k``'s photo ids. Measured at 10,000 users
(docs/benchmarks.md): a first call cost 2.6-2.9x Qdrant's exact filtered query against ~2x for a returning
asker. ``warm`` reads the same data in bulk (one scroll of the users, one of the feedback log) and fills
the same copies, keyed on the same write counts, so they can never be stale either
(``engine.ranking.user_copies``, ``engine.ranking.feedback_cache``); where a store allows no copy
(``write_count`` is None) or a collection is larger than the limits, it fills nothing and ``recommend()``
reads as before. What it fills is what the calls would have read, so rankings do not change.

A serving process calls it once after opening the store; it costs ~0.5 s per 10,000 users (vectors crossing
the bindings) plus ~15 us per stored decision (~5 s at 300,000 decisions on a loaded machine), and memory for
a copy of every user's vector twice (raw and unit length) and every user's logged decisions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from engine.learned.served import served_model
from engine.ranking.feedback_cache import fill_all
from engine.ranking.user_copies import fill_users
from engine.settings import Settings
from engine.store.base import Store

log = logging.getLogger(__name__)

MAX_USERS = 100_000  # users points read in bulk (~4 KB each kept: raw and unit vectors at 512-d, payload)
MAX_EVENTS = 2_000_000  # logged decisions read in bulk (~30 s here; a few hundred bytes each kept)


@dataclass(frozen=True)
class WarmReport:
    """What ``warm`` filled: users points read (None: nothing kept), decisions read (None: nothing kept),
    wall seconds."""

    users: int | None
    events: int | None
    seconds: float


def warm(store: Store, settings: Settings, *, max_users: int = MAX_USERS, max_events: int = MAX_EVENTS) -> WarmReport:
    """Fill this process's copies for ``store`` in bulk (module docstring): the served model (when
    ``recommend.model`` is "learned" and one is stored), every users point with its unit row and photo ids,
    and every logged decision. Raises ``StoreUnavailable``."""
    t0 = time.perf_counter()
    sm = served_model(store) if settings.recommend.model == "learned" else None
    users = fill_users(store, sm, max_users)
    events = fill_all(store, max_events)
    report = WarmReport(users, events, round(time.perf_counter() - t0, 3))
    log.info("warm: %s users points, %s decisions read in %.2f s", users, events, report.seconds)
    return report


__all__ = ["MAX_EVENTS", "MAX_USERS", "WarmReport", "warm"]
