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


class SinkhornMarket:
    """A transferable-utility market allocation over each viewer's top-``N`` (Su et al. 2022, Libimseti).

    Each round it solves, by Sinkhorn scaling, the entropy-regularised allocation ``X`` (n, n) that maximises
    ``Σ X_ij · P(i→j)·P(j→i) + ε · H(X)`` over the pairs where ``j`` is among viewer ``i``'s ``top_n`` not yet
    shown compatible candidates by mutual P, subject to each viewer getting ``k`` recommendations
    (``Σ_j X_ij = k``) and each receiver expecting no more likes than they look at
    (``Σ_i X_ij · P(i→j) ≤ attention``); each viewer is then shown their ``k`` largest ``X_ij``. The
    receivers' constraint is met by scaling down only the columns over their capacity, in turn with the
    viewers' (alternate projections, ending on the viewers': where the top-N leave no feasible plan, some
    receivers stay over capacity). It knows the true P, like the oracle. ``epsilon`` is relative to the mean mutual
    P on the support: small, and the allocation is the oracle's wherever no receiver is over capacity. With
    unlimited attention it is the oracle's ranking. Viewers who have not arrived yet still hold a row (a
    reference, not a deployable system).

    Raises ``InvalidInput`` for ``attention`` or ``top_n`` below 1 or a non-positive ``epsilon``.
    """

    name = "sinkhorn"

    def __init__(
        self,
        compat: np.ndarray,
        world: World,
        attention: int | None,
        *,
        top_n: int = 50,
        epsilon: float = 0.05,
        iterations: int = 200,
    ) -> None:
        if attention is not None and attention < 1:
            raise InvalidInput(f"sinkhorn reference: attention must be at least 1, got {attention}")
        if top_n < 1 or epsilon <= 0:
            raise InvalidInput(f"sinkhorn reference: top_n >= 1 and epsilon > 0 needed (got {top_n}, {epsilon})")
        self._compat = compat
        self._p = world.p
        self._mutual = world.mutual()
        self._attention = attention
        self._top_n = top_n
        self._epsilon = epsilon
        self._iterations = iterations
        self._shown = np.zeros(compat.shape, dtype=bool)
        self._k = 0
        self._plan: np.ndarray | None = None

    def start_round(self, round_index: int) -> None:
        self._plan = None  # solved at the round's first pick, when k is known

    def allocation(self, k: int) -> np.ndarray:
        """(n, n) the round's plan X (0 outside each viewer's top-N open candidates)."""
        open_ = self._compat & ~self._shown
        score = np.where(open_, self._mutual, -np.inf)
        n = score.shape[0]
        take = min(self._top_n, n - 1)
        top = np.argpartition(-score, take - 1, axis=1)[:, :take]
        rows = np.repeat(np.arange(n), take)
        support = np.zeros_like(open_)
        support[rows, top.ravel()] = True
        support &= open_
        m = np.where(support, self._mutual, 0.0)
        scale = float(m[support].mean()) if support.any() else 1.0
        eps = self._epsilon * (scale if scale > 0 else 1.0)
        # Gibbs kernel, shifted per row for stability (a row's shift is absorbed by its scaling).
        logits = np.where(support, m / eps, -np.inf)
        row_max = np.max(np.where(support, logits, -1e300), axis=1, keepdims=True)
        x = np.where(support, np.exp(logits - row_max), 0.0)
        want = np.minimum(k, support.sum(axis=1)).astype(np.float64)
        for _ in range(self._iterations):
            total = x.sum(axis=1)
            x *= np.where(total > 0, want / np.maximum(total, 1e-300), 0.0)[:, None]
            np.minimum(x, 1.0, out=x)  # a pair is shown at most once
            if self._attention is None:
                continue
            load = (x * self._p).sum(axis=0)  # expected likes each receiver gets
            over = load > self._attention
            if not over.any():
                break
            x[:, over] *= self._attention / load[over]
        # End on the viewers' side (each gets k; receivers' loads may exceed a little): scale and clip at 1
        # until the clipped mass is spread over the rest of the row.
        for _ in range(50):
            total = x.sum(axis=1)
            x *= np.where(total > 0, want / np.maximum(total, 1e-300), 0.0)[:, None]
            np.minimum(x, 1.0, out=x)
            if np.allclose(x.sum(axis=1), want, atol=1e-6):
                break
        return x

    def pick(self, viewer: int, k: int, exclude: set[int], liked: Sequence[int]) -> list[int]:
        if self._plan is None or k != self._k:
            self._k = k
            self._plan = self.allocation(k)
        cand = open_candidates(self._compat[viewer], exclude)
        if cand.size == 0:
            return []
        # The plan's mass first (to 1e-6: float noise is no preference), then mutual P, as the oracle ranks;
        # candidates outside the support come after, by mutual P.
        s = np.round(self._plan[viewer, cand], 6) + 1e-9 * self._mutual[viewer, cand]
        out = best_k(cand, s, k)
        self._shown[viewer, out] = True
        return out.tolist()
