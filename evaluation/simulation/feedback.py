"""Decisions of each round fed back into a strategy's store, as production would log them.

A learning strategy owns one ``FeedbackLog`` on a store of its own (a clone of the ingested store, see
``clone_store``), so no strategy sees another's decisions. At the start of every world the log is emptied;
after every round the viewers' likes *and* passes are recorded through ``engine.feedback.record_feedback``
(``ts`` = the round's day, ``ROUND_S`` seconds per round), then ``after`` runs (e.g. a model rebuild)
before the next round is picked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from engine.feedback import LIKE, PASS, Event, all_events, record_feedback
from engine.schema import FEEDBACK, PHOTOS, USERS
from engine.store import Store

log = logging.getLogger(__name__)

ROUND_S = 86400.0  # one round is one day of the app (the engine's like rates per period use days)


def clone_store(src: Store, dst: Store, *, batch_size: int = 1024) -> None:
    """Copy ``photos`` and ``users`` (vectors and payloads) of ``src`` into ``dst``, rebuilt afresh.

    Raises ``InvalidInput`` if ``src`` was never set up; store errors pass."""
    from engine.errors import InvalidInput

    info = src.info()
    if info is None:
        raise InvalidInput("clone_store: the source store holds no collections")
    dst.setup(info.encoder_id, info.dim, rebuild=True)
    for coll in (PHOTOS, USERS):
        batch = []
        for p in src.scroll(coll, with_vectors=True, batch_size=batch_size):
            batch.append(p)
            if len(batch) >= batch_size:
                dst.upsert(coll, batch)
                batch = []
        if batch:
            dst.upsert(coll, batch)
    dst.optimize()


def clear_feedback(store: Store) -> int:
    """Remove every stored decision (a simulation starting a new world); returns how many were removed."""
    ids = [p.id for p in store.scroll(FEEDBACK, batch_size=4096)]
    for start in range(0, len(ids), 4096):
        store.delete(FEEDBACK, ids[start : start + 4096])
    return len(ids)


class FeedbackLog:
    """Records one strategy's decisions into its store, round after round."""

    def __init__(self, store: Store, user_ids: Sequence[str], after: Callable[[Store], object] | None = None) -> None:
        self.store = store
        self._ids = list(user_ids)
        self._after = after

    def reset(self) -> None:
        clear_feedback(self.store)
        if self._after is not None:
            self._after(self.store)

    def record(self, round_index: int, viewer: np.ndarray, candidate: np.ndarray, like: np.ndarray) -> None:
        """Log the round's impressions (population indices, (m,) each) as likes and passes."""
        ids = self._ids
        events = [
            Event(ids[int(v)], ids[int(c)], LIKE if bool(lk) else PASS, float(round_index) * ROUND_S)
            for v, c, lk in zip(viewer.tolist(), candidate.tolist(), like.tolist(), strict=True)
        ]
        record_feedback(self.store, events, require_known=False)
        if self._after is not None:
            self._after(self.store)

    def decisions(self) -> dict[str, dict[str, str]]:
        """``viewer_id -> {candidate_id: decision}`` from the store (one scroll)."""
        out: dict[str, dict[str, str]] = {}
        for e in all_events(self.store):
            out.setdefault(e.viewer_id, {})[e.candidate_id] = e.decision
        return out
