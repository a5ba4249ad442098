"""Decision worlds: ``P(i likes j)`` for every pair, calibrated to the speed-dating data's like rates.

See the package docstring (``evaluation.simulation``) for the three worlds' formulas.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from engine.errors import InvalidInput
from evaluation.calibration import Calibration, sigmoid, solve_shift
from evaluation.simulation.population import Population

log = logging.getLogger(__name__)

WORLDS: tuple[str, ...] = ("similarity", "aspiration", "mixed")


@dataclass(frozen=True)
class WorldSettings:
    """Parameters of the decision worlds that are chosen, not fitted (see the module docstring)."""

    aim_up: float = 0.25  # aspiration: aim this far above one's own percentile (Bruch & Newman's ~25 %)
    gap_penalty: float = 2.0  # aspiration: log-odds lost per unit of percentile below one's aim
    similarity_strength: float | None = None  # similarity: log-odds per sd; None = the data's attractiveness effect
    mixed_weight: float = 0.5  # mixed: weight of the aspiration terms (1 - it: of the similarity terms)
    # Fit each person's choosiness (per-rater yes-rate spread) and the easy-raters' desirability coupling
    # (random-pair mutual rate) to the data; off: the structural terms and per-gender intercepts only.
    calibrate_raters: bool = True


@dataclass
class World:
    """``p[i, j] = P(i likes j)`` for every pair (float64, (n, n)), and what calibrated it."""

    name: str
    p: np.ndarray
    intercepts: dict[str, float]
    targets: dict[str, float]  # the data's like rate per rater gender
    random_pair_like: dict[str, float]  # mean p over compatible pairs per rater gender (= targets)
    random_pair_mutual: float  # mean p_ij p_ji over compatible pairs
    # Per-rater terms: logit p_ij gains choosiness * e_i - coupling * e_j (e: each person's easiness, sd 1).
    choosiness: float = 0.0
    coupling: float = 0.0
    rater_yes_sd: float = float("nan")  # expected sd of per-rater yes rates over the data's dates per rater
    easiness: np.ndarray | None = None  # (n,) e

    def mutual(self) -> np.ndarray:
        return self.p * self.p.T


def _standardise(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    sel = x[mask]
    sd = float(sel.std()) if sel.size else 1.0
    return (x - (float(sel.mean()) if sel.size else 0.0)) / (sd if sd > 0 else 1.0)


def structural_logits(
    name: str, pop: Population, compat: np.ndarray, cal: Calibration, ws: WorldSettings
) -> np.ndarray:
    """(n, n) the world's trait terms of logit P(i likes j), before intercepts and per-rater terms.

    Raises ``InvalidInput`` for an unknown world or a mixed weight outside [0, 1].
    """
    q = pop.percentile()
    genders = sorted(set(pop.gender.tolist()))
    if name == "mixed":
        if not 0.0 <= ws.mixed_weight <= 1.0:
            raise InvalidInput(f"mixed_weight: must be in [0, 1], got {ws.mixed_weight}")
        a = structural_logits("aspiration", pop, compat, cal, ws)
        return ws.mixed_weight * a + (1.0 - ws.mixed_weight) * structural_logits("similarity", pop, compat, cal, ws)
    base = np.zeros((pop.n, pop.n))
    if name == "similarity":
        look_z = _standardise(pop.looks @ pop.looks.T, compat)
        gap_z = _standardise(np.abs(q[:, None] - q[None, :]), compat)
        for g in genders:
            rows = pop.gender == g
            fit = cal.for_gender(g)
            strength = ws.similarity_strength
            if strength is None:
                strength = fit.slope * float(fit.ratings.std())
            w = strength / math.sqrt(2.0)
            base[rows] = w * look_z[rows] - w * gap_z[rows]
    elif name == "aspiration":
        aim = np.minimum(1.0, (1.0 + ws.aim_up) * q)
        below_aim = np.maximum(0.0, aim[:, None] - q[None, :])
        for g in genders:
            rows = pop.gender == g
            fit = cal.for_gender(g)
            rating = fit.rating_at(q)  # how raters of gender g would rate each partner
            base[rows] = fit.slope * rating[None, :] - ws.gap_penalty * below_aim[rows]
    else:
        raise InvalidInput(f"world: {name!r} is not one of {', '.join(WORLDS)}")
    return base


def _mean_sigmoid(v: np.ndarray, shift: float) -> float:
    return float(sigmoid(v + shift).mean())


def _bisect(f: Callable[[float], float], target: float, lo: float, hi: float, tol: float = 1e-7) -> float:
    """x in [lo, hi] with f(x) = target for an increasing f; the nearer end when the target is outside."""
    if f(lo) >= target:
        return lo
    if f(hi) <= target:
        return hi
    while hi - lo > tol:
        mid = (lo + hi) / 2.0
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


@dataclass
class _PairFit:
    """The calibration over the compatible pairs only (flattened): where the targets are measured."""

    i: np.ndarray  # (m,) rater of each compatible pair
    j: np.ndarray  # (m,) partner
    rev: np.ndarray  # (m,) position of the pair (j, i)
    base: np.ndarray  # (m,) structural logit
    group: np.ndarray  # (m,) rater's gender index
    easiness: np.ndarray  # (n,) e, sd 1 over users
    targets: np.ndarray  # (G,) like rate per gender index
    n: int
    _c: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _s: float = 0.0

    def logits(self, choosiness: float, coupling: float) -> np.ndarray:
        return self.base + choosiness * self.easiness[self.i] - coupling * self.easiness[self.j]

    def intercepts(self, z: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
        """(G,) per-gender shifts of the logits ``z`` (m,) that give each rater gender its like rate (Newton
        from ``start``, bisection where Newton does not settle)."""
        c = np.zeros(self.targets.size) if start is None else start.copy()
        for g in range(self.targets.size):
            v = z[self.group == g]
            if not v.size:
                continue
            t = float(self.targets[g])
            x = float(c[g])
            for _ in range(30):
                with np.errstate(over="ignore"):
                    pr = sigmoid(v + x)
                err = float(pr.mean()) - t
                if abs(err) < 1e-10:
                    break
                x -= err / max(float((pr * (1.0 - pr)).mean()), 1e-12)
            else:
                x = solve_shift(partial(_mean_sigmoid, v), t)
            c[g] = x
        return c

    def probs(self, choosiness: float, coupling: float, c: np.ndarray) -> np.ndarray:
        return np.asarray(sigmoid(self.logits(choosiness, coupling) + c[self.group]))

    def mutual(self, p: np.ndarray) -> float:
        return float((p * p[self.rev]).mean())

    def rater_sd(self, p: np.ndarray, mean_inverse_dates: float) -> float:
        """Expected sd of the per-rater yes rate when each rater meets random compatible partners, as many
        as the data's raters did: between-rater spread of the mean P plus the binomial part."""
        cnt = np.bincount(self.i, minlength=self.n)
        has = cnt > 0
        m = (np.bincount(self.i, weights=p, minlength=self.n)[has]) / cnt[has]
        return math.sqrt(float(m.var()) + float(np.mean(m * (1.0 - m))) * mean_inverse_dates)

    def solve(
        self, sd_target: float, mutual_target: float, mean_inverse_dates: float, c: np.ndarray
    ) -> tuple[float, float, np.ndarray]:
        """(choosiness s, coupling κ, intercepts c) with the rater spread, the mutual rate and the like
        rates all at their targets (each at the nearer end of its range when out of reach).

        Nested solves: for a coupling κ, the s that gives the rater spread (the intercepts re-solved at every
        step, so the like rates always hold); around that, κ for the mutual rate. Solving them in turn
        instead oscillates at 2,000 users.
        """
        self._c = c.copy()
        self._s = 0.0

        def at(s_: float, k_: float) -> np.ndarray:
            self._c = self.intercepts(self.logits(s_, k_), self._c)
            return self.probs(s_, k_, self._c)

        def mutual_at(neg_kappa: float) -> float:
            k_ = -neg_kappa
            self._s = _bisect(lambda x: self.rater_sd(at(x, k_), mean_inverse_dates), sd_target, 0.0, 6.0, 1e-4)
            return self.mutual(at(self._s, k_))

        kappa = -_bisect(mutual_at, mutual_target, -4.0, 4.0, 1e-4)
        mutual_at(-kappa)
        return self._s, kappa, self._c


def easiness(n: int, seed: int) -> np.ndarray:
    """(n,) each person's hidden easiness (a standard-normal trait, standardised), fixed by ``seed``."""
    e = np.random.default_rng([seed, 0xEA5E]).standard_normal(n)
    return (e - e.mean()) / (e.std() if n > 1 and e.std() > 0 else 1.0)


def build_world(
    name: str,
    pop: Population,
    compat: np.ndarray,
    cal: Calibration,
    ws: WorldSettings | None = None,
    *,
    seed: int = 0,
) -> World:
    """Like probabilities of world ``name`` on ``pop``, calibrated to the data over compatible pairs.

    ``logit P(i likes j) = c_g(i) + S_ij + s · e_i − κ · e_j``: ``S`` the world's trait terms
    (``structural_logits``), ``e`` each person's hidden easiness (seeded), ``s`` (choosiness spread) solved
    so that per-rater yes rates spread as in the data (sd 0.256 over the data's ~15 dates per rater), ``κ``
    (easy raters are less desired when positive) solved so that random compatible pairs match at the
    data's mutual rate (0.165), and ``c_g`` so that each rater gender likes at the data's rate. The three
    are solved in turn until all hold. Raises ``InvalidInput`` for an unknown world. Raters of a gender
    without any compatible pair keep P = 0 (they are never shown anyone) and are left out of ``intercepts``.
    """
    ws = ws or WorldSettings()
    base = structural_logits(name, pop, compat, cal, ws)
    genders = sorted(set(pop.gender.tolist()))
    gidx = np.array([genders.index(g) for g in pop.gender.tolist()], dtype=np.int64)
    i, j = np.nonzero(compat)
    pos = np.full((pop.n, pop.n), -1, dtype=np.int64)
    pos[i, j] = np.arange(i.size)
    e = easiness(pop.n, seed)
    fit = _PairFit(
        i, j, pos[j, i], base[i, j], gidx[i], e, np.array([cal.for_gender(g).like_rate for g in genders]), pop.n
    )
    s = kappa = 0.0
    c = np.zeros(len(genders))
    sd_target, inv_dates = cal.rater_yes_sd, cal.mean_inverse_dates
    fit_raters = ws.calibrate_raters and i.size > 0 and math.isfinite(sd_target) and math.isfinite(inv_dates)
    if i.size:
        c = fit.intercepts(fit.logits(s, kappa))
    if fit_raters:
        s, kappa, c = fit.solve(sd_target, cal.mutual_rate, inv_dates, c)
    logit_all = base + s * e[:, None] - kappa * e[None, :]
    p = np.zeros_like(base)
    intercepts, targets, achieved = {}, {}, {}
    for g, gname in enumerate(genders):
        rows = gidx == g
        mask = compat[rows]
        if not mask.any():
            # No one these raters could be shown (e.g. a lone non-binary user): nothing to calibrate.
            log.warning("world %s: raters of gender %r have no compatible pair", name, gname)
            continue
        p[rows] = sigmoid(logit_all[rows] + c[g])
        intercepts[gname], targets[gname] = float(c[g]), float(fit.targets[g])
        achieved[gname] = float(p[rows][mask].mean())
    np.fill_diagonal(p, 0.0)
    mutual = float((p * p.T)[compat].mean()) if compat.any() else float("nan")
    rater_sd = fit.rater_sd(p[i, j], inv_dates) if i.size and math.isfinite(inv_dates) else float("nan")
    if fit_raters and abs(mutual - cal.mutual_rate) > 0.005:
        log.warning(
            "world %s: random-pair mutual rate %.3f, the data's %.3f is out of reach", name, mutual, cal.mutual_rate
        )
    return World(name, p, intercepts, targets, achieved, mutual, s, kappa, rater_sd, e)


def world_curve(
    world: World, pop: Population, compat: np.ndarray, cal: Calibration
) -> dict[str, list[tuple[int, float, int]]]:
    """Mean P(i likes j) over compatible pairs by j's rounded rating on the data's scale, per rater gender
    (women and men): how the world's decisions depend on partner attractiveness, to set beside the data."""
    q = pop.percentile()
    out: dict[str, list[tuple[int, float, int]]] = {}
    for g in ("female", "male"):
        rows = np.flatnonzero(pop.gender == g)
        if rows.size == 0:
            continue
        r = np.clip(np.round(cal.for_gender(g).rating_at(q)), 1, 10).astype(int)
        i, j = np.nonzero(compat[rows])
        pij = world.p[rows[i], j]
        bins = r[j]
        out[g] = [(int(b), float(pij[bins == b].mean()), int((bins == b).sum())) for b in np.unique(bins)]
    return out


def pair_uniform(seed: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Counter-based uniforms in [0, 1) for ordered pairs (i, j): a splitmix64 hash of (seed, i, j).

    The same pair gets the same number in every strategy and every world; no generator state is shared,
    so the order strategies run in cannot change an outcome.
    """
    i = np.asarray(i, dtype=np.uint64)
    j = np.asarray(j, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        x = x + (i << np.uint64(32)) + j + np.uint64(0x632BE59BD9B4E019)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
