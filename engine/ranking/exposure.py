"""Exposure control in stage 2 of ``recommend()``: an impression budget, cold-start exploration, congestion.

A ranking by expected mutual match sends every viewer to the same few appealing users when tastes are
shared (the aspiration world): their exposure, and the likes they cannot answer, pile up. Three controls,
each a ``RecommendSettings`` field, act on the candidates stage 1 found (the learned pool, a few hundred),
so a viewer is never left short while enough candidates remain:

* **impression budget** (``exposure_budget``): a candidate already shown ``budget`` times in the current
  period is moved behind every candidate under budget. The counts live in an ``ExposureLedger`` that the
  serving process holds and ``recommend()`` updates with every list it returns (an impression is a served
  recommendation); a new period (a day) starts with ``ExposureLedger.new_period()``.
* **cold-start exploration** (``explore_slots``, ``explore_min``): up to ``explore_slots`` of the ``k``
  slots are reserved for *fresh* candidates — fewer than ``explore_min`` decisions received in the log *and*
  fewer than ``explore_min`` impressions in this period — those with the fewest decisions received first,
  then the most *urgent*: the impressions they still need (``explore_min`` minus this period's) over their
  audience (how many users the mutual filter lets see them, ``engine.ranking.audience``), by fused score
  among equals. A newcomer is fresh until ``explore_min`` viewers have been shown them, so their first
  period brings them that many impressions wherever stage 1 finds them (or as many as their audience
  allows), and the log then learns their appeal.
* **congestion penalty** (``congestion_capacity``, ``congestion_strength``): the fused score is multiplied
  by ``min(1, capacity / likes received per period) ** strength`` (``engine.learned.model.congestion_factor``).

``select`` returns the chosen candidates in display order (by fused score); pure numpy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from engine.errors import InvalidInput


class ExposureLedger:
    """Impressions served per user: in the current period and in total. Thread-safe; in memory.

    One ledger per serving process (or per simulated strategy); ``recommend(..., exposure=ledger)`` reads it
    to apply the budget and exploration, and records the list it returns.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._period: dict[str, int] = {}
        self._total: dict[str, int] = {}
        self._audience: dict[str, int] = {}  # users the mutual filter lets see each user; kept for a period
        self.periods = 0  # periods started so far (new_period calls)

    def new_period(self) -> None:
        """Start a new period: per-period counts go back to 0 (totals are kept)."""
        with self._lock:
            self._period.clear()
            self._audience.clear()  # profiles and arrivals change between periods: count again
            self.periods += 1

    def reset(self) -> None:
        """Forget everything (a new market, e.g. a new simulated world)."""
        with self._lock:
            self._period.clear()
            self._total.clear()
            self._audience.clear()
            self.periods = 0

    def record(self, user_ids: Iterable[str]) -> None:
        """Count one impression for each id (a user shown to some viewer)."""
        with self._lock:
            for u in user_ids:
                self._period[u] = self._period.get(u, 0) + 1
                self._total[u] = self._total.get(u, 0) + 1

    def period_counts(self, user_ids: Sequence[str]) -> np.ndarray:
        """(n,) int64 impressions of each id in the current period."""
        with self._lock:  # ``map`` over the dict's C ``get``: no Python step per id (600 per learned call)
            return np.fromiter(map(self._period.get, user_ids, repeat(0)), np.int64, len(user_ids))

    def audience(self, user_ids: Sequence[str]) -> np.ndarray:
        """(n,) float64 audience size of each id counted this period (``remember_audience``), NaN if not."""
        with self._lock:
            return np.array([self._audience.get(u, np.nan) for u in user_ids], dtype=np.float64)

    def remember_audience(self, sizes: dict[str, int]) -> None:
        """Keep each id's audience size (``engine.ranking.audience``) until the period ends."""
        with self._lock:
            self._audience.update(sizes)

    def total_counts(self, user_ids: Sequence[str]) -> np.ndarray:
        """(n,) int64 impressions of each id since the ledger was made (or reset)."""
        with self._lock:
            return np.array([self._total.get(u, 0) for u in user_ids], dtype=np.int64)


@dataclass(frozen=True)
class ExposurePolicy:
    """The controls of this module (mirrors ``RecommendSettings``); 0 turns each off."""

    budget: int = 0  # impressions per candidate per period before they go behind everyone under budget
    explore_slots: int = 0  # slots of k reserved for fresh candidates
    explore_min: int = 10  # a candidate is fresh below this many decisions received and period impressions

    def __post_init__(self) -> None:
        if self.budget < 0 or self.explore_slots < 0 or self.explore_min < 0:
            raise InvalidInput(
                "recommend.exposure_budget / explore_slots / explore_min: must be >= 0, got "
                f"{self.budget} / {self.explore_slots} / {self.explore_min}"
            )


def fresh_mask(decisions_received: np.ndarray, period_impressions: np.ndarray, explore_min: int) -> np.ndarray:
    """(n,) bool: fewer than ``explore_min`` decisions received in the log and impressions this period."""
    return (np.asarray(decisions_received) < explore_min) & (np.asarray(period_impressions) < explore_min)


UNLIMITED = 1e12  # the audience of a candidate whose audience is unknown


def urgency(period_impressions: np.ndarray, explore_min: int, audience: np.ndarray | None) -> np.ndarray:
    """(n,) float64: impressions a fresh candidate still needs this period over the users who may see them.

    ``(explore_min - impressions) / audience``; the viewers still to come this period are the same share of
    every candidate's audience, so this orders candidates by the share of their remaining viewers they need.
    An unknown audience (``None`` or NaN) counts as unlimited (``UNLIMITED``): those come after every known
    one, the fewest shown first (the order of equal audiences). Audiences below 1 count as 1.
    """
    need = explore_min - np.asarray(period_impressions, dtype=np.float64)
    if audience is None:
        return need / UNLIMITED
    aud = np.asarray(audience, dtype=np.float64)
    return need / np.where(np.isfinite(aud), np.maximum(aud, 1.0), UNLIMITED)


def select(
    score: np.ndarray,
    k: int,
    policy: ExposurePolicy,
    *,
    period_impressions: np.ndarray | None = None,
    decisions_received: np.ndarray | None = None,
    audience: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Indices of up to ``k`` candidates, in display order (fused ``score`` descending, stable).

    ``score`` (n,) the fused score (after any congestion penalty); ``period_impressions`` (n,) each
    candidate's impressions this period (None: budget and exploration off, no ledger);
    ``decisions_received`` (n,) decisions each candidate received in the log (None: all 0); ``audience``:
    given indices into ``score``, how many users may be shown each of those candidates (NaN, or no callable:
    unknown, taken as unlimited); asked only for the fresh candidates who can win a slot.
    Under-budget candidates come before over-budget ones; among the chosen, up to ``policy.explore_slots``
    are the fresh candidates (``fresh_mask``) first by ``urgency``. Raises ``InvalidInput`` for ``k`` < 1.
    """
    if k < 1:
        raise InvalidInput(f"k: must be a positive integer, got {k}")
    s = np.asarray(score, dtype=np.float64)
    n = s.size
    order = np.argsort(-s, kind="stable")
    if n == 0 or period_impressions is None:
        return order[:k]
    seen = np.asarray(period_impressions, dtype=np.int64)
    if policy.budget > 0:
        under = seen[order] < policy.budget
        order = np.concatenate([order[under], order[~under]])  # stable: score order inside each group
    if policy.explore_slots <= 0:
        return order[:k]
    got = np.zeros(n, dtype=np.int64) if decisions_received is None else np.asarray(decisions_received)
    fresh = fresh_mask(got, seen, policy.explore_min) & (s > 0)  # score 0: a logged pass, no match possible
    # The slots go to the fresh candidates with the fewest decisions received, then the most urgent, the best
    # fused score among equals: a newcomer (no decision yet) comes before an established user who has had a
    # few, whatever the fit. Measured: by score x need, established users with a few impressions took the
    # slots and a third of the newcomers stayed short; by max(received, impressions), a fifth still did at
    # 2,000 users in the aspiration world, where many established users stay fresh (docs/results.md); by
    # fewest impressions, a newcomer with 11 possible viewers got 9 at 1,000 users (two of its viewers gave
    # their slots to newcomers hundreds could still see), hence urgency.
    cand = np.flatnonzero(fresh)
    aud: np.ndarray | None = None
    if audience is not None and cand.size:
        # Only the tiers of decisions received that can fill the slots compete on urgency (the order's first
        # key): a few counts per call instead of one per fresh candidate (~0.4 ms each at 2,000 users).
        tier = np.sort(got[cand])[min(policy.explore_slots, k, cand.size) - 1]
        contenders = got[cand] <= tier
        aud = np.full(cand.size, np.nan)
        aud[contenders] = audience(cand[contenders])
    urg = urgency(seen[cand], policy.explore_min, aud)
    by_pri = cand[np.lexsort((cand, -s[cand], -urg, got[cand]))]  # fewest received, most urgent, best score
    explore = [int(i) for i in by_pri[: min(policy.explore_slots, k)]]
    chosen = set(explore)
    # The first k + len(explore) of the order hold the k - len(explore) best not chosen (no step per candidate).
    head = order[: k + len(explore)].tolist()
    picks = explore + [i for i in head if i not in chosen][: k - len(explore)]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return np.array(sorted(picks, key=lambda i: rank[i]), dtype=np.int64)


def choose(
    score: np.ndarray,
    k: int,
    policy: ExposurePolicy,
    user_ids: Sequence[str],
    decisions_received: np.ndarray | None,
    ledger: ExposureLedger | None,
    audience: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """``select`` with the counts read from ``ledger`` (None: plain top-``k`` by score), and the chosen
    ``user_ids`` recorded in it as this period's impressions. ``audience``: as in ``select``
    (``engine.ranking.audience.audience_of``). Returns indices into ``score``, (≤ k,)."""
    seen = ledger.period_counts(user_ids) if ledger is not None else None
    picks = select(score, k, policy, period_impressions=seen, decisions_received=decisions_received, audience=audience)
    if ledger is not None:
        ledger.record(user_ids[int(i)] for i in picks)
    return picks


__all__ = ["ExposureLedger", "ExposurePolicy", "choose", "fresh_mask", "select", "urgency"]
