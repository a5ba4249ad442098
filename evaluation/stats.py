"""Statistics for the like-rate simulation and the replay of like logs: Gini, AUC, bootstrap intervals, lift.

Bootstrap unit. Impressions shown to one viewer are not independent (one viewer's taste, one viewer's
candidate pool, and in the simulation one viewer's latent traits), so resampling impressions would give
intervals that are too narrow. Every interval here resamples *viewers* (users) with replacement and
recomputes the statistic from all impressions of the drawn viewers — a cluster bootstrap. One set of
resampling weights is shared by all strategies of a run, so differences and ratios between strategies
(lift, share of the oracle's lift) get paired intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.errors import InvalidInput


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values (e.g. how often each user was shown), in [0, 1).

    0 when every value is equal; ``(n-1)/n`` when one value holds everything. All-zero input gives 0.
    Raises ``InvalidInput`` on negative, non-finite or empty input.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise InvalidInput("gini: no values")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise InvalidInput("gini: values must be finite and non-negative")
    return float(gini_rows(x[None, :])[0])


def gini_rows(values: np.ndarray) -> np.ndarray:
    """Gini of each row of a (b, n) non-negative array -> (b,) float64 (vectorised for bootstrap draws)."""
    x = np.sort(np.asarray(values, dtype=np.float64), axis=1)
    n = x.shape[1]
    total = x.sum(axis=1)
    # G = sum_i (2i - n - 1) x_(i) / (n sum x), i = 1..n over the sorted values.
    coef = 2.0 * np.arange(1, n + 1) - n - 1
    num = x @ coef
    out = np.zeros(x.shape[0])
    nz = total > 0
    out[nz] = num[nz] / (n * total[nz])
    return out


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` with ties given the mean of the ranks they span (float64, same shape)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # Start index of each run of equal values, and the run each sorted position belongs to.
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    run_of = np.repeat(np.arange(starts.size), ends - starts)
    ranks = np.empty(x.size)
    ranks[order] = run_rank[run_of]
    return ranks


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the Mann–Whitney U statistic; a tied positive/negative pair counts 1/2.

    ``scores`` (n,) floats, higher = more likely positive; ``labels`` (n,) booleans or 0/1.
    Raises ``InvalidInput`` if the shapes differ, a score is not finite, or either class is empty.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise InvalidInput(f"auc: {s.size} scores but {y.size} labels")
    if not np.all(np.isfinite(s)):
        raise InvalidInput("auc: scores must be finite")
    if not np.all(np.isin(y, (0, 1))):
        raise InvalidInput("auc: labels must be 0/1 or booleans")
    pos = y.astype(bool)
    n_pos = int(pos.sum())
    n_neg = int(pos.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise InvalidInput(f"auc: needs both classes (got {n_pos} positive, {n_neg} negative)")
    r = average_ranks(s)
    u = r[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def lift(value: float, baseline: float) -> float:
    """``value / baseline`` (e.g. a strategy's mutual-match rate over random's); NaN if the baseline is 0."""
    return float(value / baseline) if baseline != 0 else float("nan")


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a percentile bootstrap interval."""

    value: float
    lo: float
    hi: float

    def fmt(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def bootstrap_weights(n_units: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_units) int counts: how often each unit (viewer) is drawn in each resample of size n_units.

    Equivalent to resampling units with replacement; as weights, one draw serves every statistic and
    every strategy of a run (paired comparisons). Seeded, so intervals are reproducible.
    """
    if n_units < 1 or n_boot < 1:
        raise InvalidInput(f"bootstrap: needs at least one unit and one resample (got {n_units}, {n_boot})")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_boot).astype(np.float64)


def percentile_interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap draws (NaN draws ignored)."""
    d = np.asarray(draws, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan"), float("nan")
    a = (1.0 - level) / 2.0
    return float(np.quantile(d, a)), float(np.quantile(d, 1.0 - a))


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n_units: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """Percentile bootstrap interval of ``statistic`` over units resampled with replacement.

    ``statistic(idx)`` receives an int array of unit indices (length ``n_units``, with repeats) and returns
    a float; it is called once with ``arange(n_units)`` for the point estimate. Resample the clusters
    (viewers), not the impressions inside them — see the module docstring.
    """
    if n_units < 1:
        raise InvalidInput("bootstrap_ci: no units")
    if not 0.0 < level < 1.0:
        raise InvalidInput(f"bootstrap_ci: level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    point = float(statistic(np.arange(n_units)))
    draws = np.array([statistic(rng.integers(0, n_units, n_units)) for _ in range(n_boot)])
    lo, hi = percentile_interval(draws, level)
    return Estimate(point, lo, hi)


def ratio_estimate(num: np.ndarray, den: np.ndarray, weights: np.ndarray, level: float = 0.95) -> Estimate:
    """Estimate of ``sum(num) / sum(den)`` over units, with the interval from bootstrap ``weights``.

    ``num``, ``den``: (n,) per-unit totals (e.g. likes and impressions per viewer); ``weights``: (b, n)
    from ``bootstrap_weights``.
    """
    den_total = den.sum()
    value = float(num.sum() / den_total) if den_total > 0 else float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        draws = (weights @ num) / (weights @ den)
    lo, hi = percentile_interval(draws, level)
    return Estimate(value, lo, hi)
