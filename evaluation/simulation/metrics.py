"""Metrics of the impressions, with two-way (viewer × candidate) bootstrap intervals, and run records.

The metrics, their bootstrap draws and the run records that carry them are read together; the tables that
render the records are in ``evaluation.simulation.tables``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InvalidInput
from evaluation.simulation.rounds import Impressions
from evaluation.stats import Estimate, bootstrap_weights, gini_rows, percentile_interval

METRICS: tuple[str, ...] = (
    "like_rate",
    "mutual_rate",
    "matches_per_user",
    "effective_rate",
    "effective_per_user",
    "precision_viewer",
    "precision_candidate",
    "coverage",
    "gini",
    "match_gini",
    "zero_match_share",
    "envy_share",
)
METRIC_LABELS: dict[str, str] = {
    "like_rate": "one-way like rate",
    "mutual_rate": "mutual-match rate",
    "matches_per_user": "mutual matches per user",
    "effective_rate": "effective-match rate (attention B)",
    "effective_per_user": "effective matches per user",
    "precision_viewer": "precision@k (viewer likes)",
    "precision_candidate": "precision@k (candidate likes back)",
    "coverage": "coverage",
    "gini": "exposure Gini",
    "match_gini": "Gini of effective matches",
    "zero_match_share": "users with no effective match",
    "envy_share": "users who envy another's list",
}


@dataclass
class StrategyResult:
    """One strategy's metrics in one world; every ``Estimate`` has a 95 % bootstrap interval (two-way by default)."""

    strategy: str
    n_impressions: int
    shortfall: int
    incompatible: int
    metrics: dict[str, Estimate]
    lift: dict[str, Estimate]  # like_rate and mutual_rate over random's
    oracle_share: dict[str, Estimate]  # (s - random) / (oracle - random), for like_rate and mutual_rate
    newcomers: dict[str, float] = field(default_factory=dict)  # ``newcomer_stats``; empty without newcomers


BOOTSTRAPS: tuple[str, ...] = ("two_way", "viewer")

NEWCOMER_LABELS: dict[str, str] = {
    "newcomers": "newcomers",
    "first_round_exposure": "times shown, first round (newcomers)",
    "first_round_exposure_established": "times shown, same round (established)",
    "shown_k_share": "newcomers shown ≥ k times in their first round",
    "shown_possible_share": "newcomers shown ≥ min(k, compatible users) times",
    "fewer_viewers_than_k": "newcomers with fewer than k compatible users",
    "first_round_recommendations": "recommendations received, first round (newcomers)",
    "matches_since_arrival": "effective matches since arrival (newcomers)",
    "matches_since_arrival_established": "effective matches, same rounds (established)",
    "success_ratio": "newcomers / established",
}


def newcomer_stats(imp: Impressions, joins: np.ndarray, k: int, compat: np.ndarray | None = None) -> dict[str, float]:
    """How the users who arrive late fare against those there from the start (empty dict if none do).

    ``joins`` (n,) each user's arrival round (0-based; one cohort of newcomers, arriving in round r0).
    First round: how often each newcomer is shown to others in r0 (beside the established users' mean in
    r0), the share shown at least ``k`` times, and the recommendations they receive. Success: effective
    matches a user takes part in (as viewer or candidate) from r0 on, per user, and the newcomers' mean
    over the established users' mean.

    ``compat`` (n, n) bool, the mutual filter, adds what the market allows: a newcomer with fewer than ``k``
    compatible users present in r0 cannot be shown ``k`` times, whatever the strategy (each viewer sees a
    candidate once). ``shown_possible_share``: newcomers shown at least ``min(k, compatible viewers)`` times;
    ``fewer_viewers_than_k``: how many newcomers that bound is below ``k`` for.
    """
    joins = np.asarray(joins)
    late = joins > 0
    if not late.any():
        return {}
    n = joins.size
    r0 = int(joins[late].min())
    first = imp.round == r0
    exposure = np.bincount(imp.candidate[first], minlength=n).astype(np.float64)
    recs = np.bincount(imp.viewer[first], minlength=n).astype(np.float64)
    since = imp.effective & (imp.round >= r0)
    matches = (np.bincount(imp.viewer[since], minlength=n) + np.bincount(imp.candidate[since], minlength=n)).astype(
        np.float64
    )
    est = ~late
    possible: dict[str, float] = {}
    if compat is not None:
        present = joins <= r0
        viewers = (np.asarray(compat, bool)[present][:, late]).sum(axis=0)  # compat[i, i] is False
        bound = np.minimum(k, viewers)
        possible = {
            "shown_possible_share": float((exposure[late] >= bound).mean()),
            "fewer_viewers_than_k": float((viewers < k).sum()),
        }
    new_m, est_m = float(matches[late].mean()), float(matches[est].mean()) if est.any() else float("nan")
    return {
        "newcomers": float(late.sum()),
        "first_round_exposure": float(exposure[late].mean()),
        "first_round_exposure_established": float(exposure[est].mean()) if est.any() else float("nan"),
        "shown_k_share": float((exposure[late] >= k).mean()),
        **possible,
        "first_round_recommendations": float(recs[late].mean()),
        "matches_since_arrival": new_m,
        "matches_since_arrival_established": est_m,
        "success_ratio": new_m / est_m if est_m > 0 else float("nan"),
    }


def _candidate_weighted_sums(imp: Impressions, values: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(K, b, n) per draw and viewer, sums of ``u[b, candidate] · values[:, k]`` over the viewer's impressions.

    ``values`` (m, K); ``u`` (b, n) candidate draw counts. As ``u @ X_k.T`` with ``X_k`` the dense (n, n)
    viewer × candidate matrix of column k: a matrix product is far faster than gathering ``u`` per
    impression. float32 is exact here (small integer counts times 0/1 values).
    """
    n = u.shape[1]
    uf = u.astype(np.float32)
    out = np.empty((values.shape[1], u.shape[0], n), dtype=np.float32)
    x = np.zeros((n, n), dtype=np.float32)
    for k in range(values.shape[1]):
        x[:] = 0.0
        np.add.at(x, (imp.viewer, imp.candidate), values[:, k].astype(np.float32))
        out[k] = uf @ x.T
    return out


def user_matches(imp: Impressions, n: int) -> np.ndarray:
    """(n,) effective matches each user takes part in, as viewer or as candidate, over the run."""
    eff = imp.effective
    return (np.bincount(imp.viewer[eff], minlength=n) + np.bincount(imp.candidate[eff], minlength=n)).astype(np.float64)


def attention_share(imp: Impressions, attention: int | None) -> np.ndarray:
    """(m,) the share of the likes an impression's candidate received in that round which they looked at:
    ``min(1, B / likes received by the candidate in the round)`` (1 with unlimited attention, B None).

    The chance that one more like sent to that candidate in that round would have been seen, as the
    position-based attention of ``rounds.attention_seen`` treats likes in arrival order.
    """
    if attention is None or imp.candidate.size == 0:
        return np.ones(imp.candidate.size)
    n = int(imp.candidate.max()) + 1
    key = imp.round.astype(np.int64) * n + imp.candidate
    _, inv = np.unique(key, return_inverse=True)
    received = np.bincount(inv, weights=imp.like.astype(np.float64))
    return np.asarray(np.minimum(1.0, attention / np.maximum(received[inv], 1.0)))


def envious_users(imp: Impressions, mutual: np.ndarray, attention: int | None = None) -> np.ndarray:
    """(n,) bool: users who would expect more matches from another viewer's recommendations than from theirs.

    ``mutual`` (n, n): ``P(i→j)·P(j→i)``, 0 outside the compatibility filter. A viewer's utility of a list is
    the sum, over its impressions, of their mutual probability with the candidate times the share of the
    likes that candidate received that round which they looked at (``attention_share``; 1 when
    ``attention`` is None): expected *effective* matches, so a list of over-liked people who never see
    most likes is worth what it really brings. ``i`` envies ``j`` when ``i``'s utility of ``j``'s list beats
    that of their own (Saito & Joachims 2022's envy-freeness, with the lists every viewer got over the
    run). Users never served envy no one.
    """
    n = mutual.shape[0]
    lists = np.zeros((n, n), dtype=np.float32)
    lists[imp.viewer, imp.candidate] = attention_share(imp, attention).astype(np.float32)
    util = mutual.astype(np.float32) @ lists.T  # util[i, j]: i's expected matches from j's list
    own = np.diag(util).copy()
    np.fill_diagonal(util, -np.inf)
    served = lists.any(axis=1)
    return served & (util.max(axis=1) > own * (1.0 + 1e-6) + 1e-9)


def _draws(
    imp: Impressions,
    n: int,
    weights: np.ndarray,
    exposure_idx: np.ndarray,
    candidate_weights: np.ndarray | None = None,
    pair_mutual: np.ndarray | None = None,
    attention: int | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Point values and bootstrap draws (b,) of every metric.

    Rates and precisions resample viewers (``weights``, (b, n) counts): one viewer's impressions are
    correlated. With ``candidate_weights`` ((b, n) counts, drawn independently) they also resample the
    candidates (a two-way bootstrap: each impression weighs its viewer's count times its candidate's), since
    one candidate's decisions recur in many viewers' rows. Coverage and Gini describe how exposure is spread
    over the users shown, so they resample users as the exposed unit (``exposure_idx``, (b, n) indices):
    resampling viewers instead would drop a third of the viewers from every draw and bias both downward.
    The fairness figures (Gini of effective matches per user, zero-match share, envy share: the last only
    with ``pair_mutual``, the world's masked ``P(i→j)·P(j→i)``) resample users the same way.
    """
    shown = np.bincount(imp.viewer, minlength=n).astype(np.float64)
    likes = np.bincount(imp.viewer, weights=imp.like, minlength=n)
    backs = np.bincount(imp.viewer, weights=imp.back, minlength=n)
    mutual = np.bincount(imp.viewer, weights=imp.mutual, minlength=n)
    effective = np.bincount(imp.viewer, weights=imp.effective, minlength=n)
    has = (shown > 0).astype(np.float64)
    prec_v = np.where(shown > 0, likes / np.maximum(shown, 1), 0.0)
    prec_c = np.where(shown > 0, backs / np.maximum(shown, 1), 0.0)
    point: dict[str, float] = {}
    draws: dict[str, np.ndarray] = {}
    cw = candidate_weights if imp.viewer.size else None
    tw: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if cw is not None:
        cols = np.column_stack([np.ones(imp.viewer.size), imp.like, imp.back, imp.mutual, imp.effective])
        per = _candidate_weighted_sums(imp, cols.astype(np.float64), cw).astype(np.float64)  # (5, b, n)
        tot, like_s, back_s, mut_s, eff_s = ((weights * per[k]).sum(axis=1) for k in range(5))
        users = weights.sum(axis=1)
        tw = {
            "like_rate": (like_s, tot),
            "mutual_rate": (mut_s, tot),
            "matches_per_user": (mut_s, users),
            "effective_rate": (eff_s, tot),
            "effective_per_user": (eff_s, users),
        }
        # Precision per viewer, then averaged over the drawn viewers; a viewer whose candidates all drew
        # 0 sits that draw out.
        ok = per[0] > 0
        wok = weights * ok
        with np.errstate(invalid="ignore", divide="ignore"):
            for key, k in (("precision_viewer", 1), ("precision_candidate", 2)):
                prec = np.where(ok, per[k] / np.where(ok, per[0], 1.0), 0.0)
                tw[key] = ((wok * prec).sum(axis=1), wok.sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        for key, num, den in (
            ("like_rate", likes, shown),
            ("mutual_rate", mutual, shown),
            ("matches_per_user", mutual, np.ones(n)),
            ("effective_rate", effective, shown),
            ("effective_per_user", effective, np.ones(n)),
            ("precision_viewer", prec_v * has, has),
            ("precision_candidate", prec_c * has, has),
        ):
            point[key] = float(num.sum() / den.sum()) if den.sum() > 0 else float("nan")
            if key in tw:
                draws[key] = tw[key][0] / tw[key][1]
            else:
                draws[key] = (weights @ num) / (weights @ den)
    exposure = np.bincount(imp.candidate, minlength=n).astype(np.float64)
    point["coverage"] = float((exposure > 0).mean())
    point["gini"] = float(gini_rows(exposure[None, :])[0])
    resampled = exposure[exposure_idx]
    draws["coverage"] = (resampled > 0).mean(axis=1)
    draws["gini"] = gini_rows(resampled)
    # Fairness of the outcomes, over users (resampled as the exposed unit, like coverage and Gini).
    matches = user_matches(imp, n)
    point["match_gini"] = float(gini_rows(matches[None, :])[0])
    point["zero_match_share"] = float((matches == 0).mean())
    draws["match_gini"] = gini_rows(matches[exposure_idx])
    draws["zero_match_share"] = (matches[exposure_idx] == 0).mean(axis=1)
    if pair_mutual is not None:
        envy = envious_users(imp, pair_mutual, attention).astype(np.float64)
        point["envy_share"] = float(envy.mean())
        draws["envy_share"] = envy[exposure_idx].mean(axis=1)
    else:
        point["envy_share"] = float("nan")
        draws["envy_share"] = np.full(exposure_idx.shape[0], np.nan)
    return point, draws


def evaluate(
    impressions: dict[str, Impressions],
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    bootstrap: str = "two_way",
    joins: np.ndarray | None = None,
    k: int = 0,
    mutual: np.ndarray | None = None,
    attention: int | None = None,
    compat: np.ndarray | None = None,
) -> list[StrategyResult]:
    """Metrics, intervals, lift over ``random`` and share of the ``oracle``'s lift, for every strategy.

    ``bootstrap``: ``"two_way"`` resamples viewers and candidates independently (default), ``"viewer"``
    viewers only (narrower: it ignores that a candidate's decisions recur across viewers). ``joins`` (n,),
    each user's arrival round, adds ``newcomer_stats`` (with ``k`` the recommendations per round and
    ``compat`` (n, n), the mutual filter, for what the market allows newcomers).
    ``mutual`` (n, n), the world's ``P(i→j)·P(j→i)`` masked by the filter, gives the envy share (NaN
    without), attention-aware with ``attention`` (``envious_users``). One set of bootstrap weights serves
    all strategies, so lifts and shares have paired intervals. Raises ``InvalidInput`` for an unknown
    ``bootstrap``.
    """
    if bootstrap not in BOOTSTRAPS:
        raise InvalidInput(f"bootstrap: {bootstrap!r} is not one of {', '.join(BOOTSTRAPS)}")
    weights = bootstrap_weights(n, n_boot, seed)
    cand_weights = bootstrap_weights(n, n_boot, seed + 0x7A0) if bootstrap == "two_way" else None
    exposure_idx = np.random.default_rng([seed, 0xE7]).integers(0, n, size=(n_boot, n))
    computed = {
        name: _draws(imp, n, weights, exposure_idx, cand_weights, mutual, attention)
        for name, imp in impressions.items()
    }
    results = []
    for name, imp in impressions.items():
        point, draws = computed[name]
        metrics = {}
        for key in METRICS:
            lo, hi = percentile_interval(draws[key], level)
            metrics[key] = Estimate(point[key], lo, hi)
        lift: dict[str, Estimate] = {}
        share: dict[str, Estimate] = {}
        for key in ("like_rate", "mutual_rate"):
            if "random" in computed:
                rp, rd = computed["random"][0][key], computed["random"][1][key]
                with np.errstate(invalid="ignore", divide="ignore"):
                    lift[key] = Estimate(
                        point[key] / rp if rp else float("nan"), *percentile_interval(draws[key] / rd, level)
                    )
                if "oracle" in computed:
                    op, od = computed["oracle"][0][key], computed["oracle"][1][key]
                    with np.errstate(invalid="ignore", divide="ignore"):
                        pv = (point[key] - rp) / (op - rp) if op != rp else float("nan")
                        share[key] = Estimate(pv, *percentile_interval((draws[key] - rd) / (od - rd), level))
        results.append(
            StrategyResult(
                name,
                int(imp.viewer.size),
                imp.shortfall,
                imp.incompatible,
                metrics,
                lift,
                share,
                newcomer_stats(imp, joins, k, compat) if joins is not None else {},
            )
        )
    return results


@dataclass
class WorldResult:
    """All strategies in one world, and how that world was calibrated."""

    world: str
    strategies: list[StrategyResult]
    intercepts: dict[str, float]
    data_like_rate: dict[str, float]  # the speed-dating like rate per rater gender (the target)
    random_pair_like: dict[str, float]  # mean P over compatible pairs per rater gender, after calibration
    random_pair_mutual: float  # mean P(i→j) P(j→i) over compatible pairs
    random_strategy_like: dict[str, float]  # what the random strategy's viewers of each gender liked
    # The world's P(like | partner rating) on this population, per rater gender: [(rating, mean P, pairs)].
    curve: dict[str, list[tuple[int, float, int]]] = field(default_factory=dict)
    choosiness: float = 0.0  # sd (log-odds) of each rater's easiness term, fitted to the rater spread
    coupling: float = 0.0  # log-odds an easier-by-1-sd partner loses, fitted to the mutual rate
    rater_yes_sd: float = float("nan")  # the world's per-rater yes-rate sd over the data's dates per rater
    n_users: int = 0  # the population size (envy is shown as a count of users)

    def by_name(self) -> dict[str, StrategyResult]:
        return {s.strategy: s for s in self.strategies}


@dataclass
class SimulationResult:
    """What ``simulate`` measured; ``table()`` renders it for a terminal or a markdown file."""

    config: dict[str, Any]
    worlds: list[WorldResult]
    data_mutual_rate: float
    timings: dict[str, float] = field(default_factory=dict)
    ingest: dict[str, Any] = field(default_factory=dict)
    report_path: Path | None = None

    def table(self, world: str | None = None) -> str:
        """Markdown table(s): each strategy's metrics (95 % CI), lift over random, share of oracle's lift."""
        from evaluation.simulation.tables import simulation_tables

        return simulation_tables(self.worlds, world)

    def compact_table(self) -> str:
        """A few columns per world that fit a terminal (< 90 characters a line): like and mutual rate,
        matches per user, mutual lift over random. Point values only; ``table()`` has the intervals."""
        from evaluation.simulation.tables import compact_tables

        return compact_tables(self.worlds)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["report_path"] = str(self.report_path) if self.report_path else None
        return d
