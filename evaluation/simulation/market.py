"""A market-level reference allocator: the oracle's ranking, discounted by the receivers' limited attention.

The per-viewer oracle ranks by the true mutual probability ``P(i→j)·P(j→i)`` for every viewer on its own, so
the most wanted receivers get far more likes than they can look at (``attention`` B per round) and those
likes make no match. ``MarketReference`` serves the viewers in the order they come and ranks each one's
candidates by the *expected effective match* ``P(i→j)·P(j→i)·P(j still looks at a like when i's arrives)``,
the last factor from the likes it has already sent ``j`` this round (Poisson with that expected count).
It knows the true P, like the oracle: a reference for what is left on the table, not a deployable strategy.
With unlimited attention it is the oracle, pick for pick.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.errors import InvalidInput
from evaluation.simulation.strategies import best_k, open_candidates
from evaluation.simulation.worlds import World


def poisson_below(lam: np.ndarray, b: int) -> np.ndarray:
    """(n,) P(X < b) for X ~ Poisson(lam): the chance a receiver expecting ``lam`` likes still has room."""
    term = np.exp(-lam)
    total = term.copy()
    for i in range(1, b):
        term = term * lam / i
        total += term
    return np.clip(total, 0.0, 1.0)


class MarketReference:
    """Top-``k`` per viewer by mutual P times the chance the candidate still has attention left.

    ``compat``: (n, n) bool filter; ``attention``: B, incoming likes a receiver looks at per round (None:
    unlimited, then this is the oracle). Raises ``InvalidInput`` for ``attention`` below 1.
    """

    name = "market"

    def __init__(self, compat: np.ndarray, world: World, attention: int | None) -> None:
        if attention is not None and attention < 1:
            raise InvalidInput(f"market reference: attention must be at least 1, got {attention}")
        self._compat = compat
        self._p = world.p
        self._mutual = world.mutual()
        self._attention = attention
        self._load = np.zeros(compat.shape[0])  # expected likes each receiver got this round so far

    def start_round(self, round_index: int) -> None:
        self._load[:] = 0.0

    def pick(self, viewer: int, k: int, exclude: set[int], liked: Sequence[int]) -> list[int]:
        cand = open_candidates(self._compat[viewer], exclude)
        if cand.size == 0:
            return []
        s = self._mutual[viewer, cand]
        if self._attention is not None:
            s = s * poisson_below(self._load[cand], self._attention)
        out = best_k(cand, s, k)
        self._load[out] += self._p[viewer, out]
        return out.tolist()
