"""Decision worlds: ``P(i likes j)`` for every pair, calibrated to the speed-dating data's like rates.

See the package docstring (``evaluation.simulation``) for the two worlds' formulas.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from engine.errors import InvalidInput
from evaluation.calibration import Calibration, sigmoid, solve_shift
from evaluation.simulation.population import Population

log = logging.getLogger(__name__)

WORLDS: tuple[str, ...] = ("similarity", "aspiration")


@dataclass(frozen=True)
class WorldSettings:
    """Parameters of the decision worlds that are chosen, not fitted (see the module docstring)."""

    aim_up: float = 0.25  # aspiration: aim this far above one's own percentile (Bruch & Newman's ~25 %)
    gap_penalty: float = 2.0  # aspiration: log-odds lost per unit of percentile below one's aim
    similarity_strength: float | None = (
        None  # similarity: log-odds per sd; None = the data's attractiveness effect
    )


@dataclass
class World:
    """``p[i, j] = P(i likes j)`` for every pair (float64, (n, n)), and what calibrated it."""

    name: str
    p: np.ndarray
    intercepts: dict[str, float]
    targets: dict[str, float]  # the data's like rate per rater gender
    random_pair_like: dict[str, float]  # mean p over compatible pairs per rater gender (= targets)
    random_pair_mutual: float  # mean p_ij p_ji over compatible pairs

    def mutual(self) -> np.ndarray:
        return self.p * self.p.T


def _standardise(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    sel = x[mask]
    sd = float(sel.std()) if sel.size else 1.0
    return (x - (float(sel.mean()) if sel.size else 0.0)) / (sd if sd > 0 else 1.0)


def build_world(
    name: str, pop: Population, compat: np.ndarray, cal: Calibration, ws: WorldSettings | None = None
) -> World:
    """Like probabilities of world ``name`` on ``pop``, calibrated to the data's rates over compatible pairs.

    Raises ``InvalidInput`` for an unknown world. Raters of a gender without any compatible pair keep P = 0
    (they are never shown anyone) and are left out of ``intercepts``.
    """
    ws = ws or WorldSettings()
    q = pop.percentile()
    base = np.zeros((pop.n, pop.n))
    genders = sorted(set(pop.gender.tolist()))
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

    p = np.zeros_like(base)
    intercepts, targets, achieved = {}, {}, {}
    for g in genders:
        rows = pop.gender == g
        block, mask = base[rows], compat[rows]
        vals = block[mask]
        if vals.size == 0:
            # No one these raters could be shown (e.g. a lone non-binary user): nothing to calibrate.
            log.warning("world %s: raters of gender %r have no compatible pair", name, g)
            continue
        target = cal.for_gender(g).like_rate
        def mean_prob(shift: float, v: np.ndarray = vals) -> float:
            return float(sigmoid(v + shift).mean())

        c = solve_shift(mean_prob, target)
        p[rows] = sigmoid(block + c)
        intercepts[g], targets[g] = c, target
        achieved[g] = float(p[rows][mask].mean())
    np.fill_diagonal(p, 0.0)
    mutual = float((p * p.T)[compat].mean()) if compat.any() else float("nan")
    return World(name, p, intercepts, targets, achieved, mutual)


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
        out[g] = [
            (int(b), float(pij[bins == b].mean()), int((bins == b).sum())) for b in np.unique(bins)
        ]
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
