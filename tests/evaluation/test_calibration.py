"""Calibration on the packaged speed-dating data, and the worlds it calibrates."""

from __future__ import annotations

import numpy as np
import pytest
from demo_population import demo_population

from engine.errors import InvalidInput
from evaluation.calibration import fit_calibration, fit_logistic, load_speed_dating, sigmoid
from evaluation.simulation import WORLDS, Population, build_world


@pytest.fixture(scope="module")
def calib():  # -> CalibrationData
    return fit_calibration()


def test_data_is_the_columbia_experiment() -> None:
    d = load_speed_dating()
    assert d.dec.size == 8378
    assert d.dec[d.gender == 0].mean() == pytest.approx(0.365, abs=0.001)
    assert d.dec[d.gender == 1].mean() == pytest.approx(0.474, abs=0.001)
    assert d.match.mean() == pytest.approx(0.165, abs=0.001)


def test_fit_logistic_recovers_parameters() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, 20_000)
    y = rng.random(x.size) < sigmoid(-3.0 + 0.6 * x)
    a, b = fit_logistic(x, y)
    assert a == pytest.approx(-3.0, abs=0.15)
    assert b == pytest.approx(0.6, abs=0.03)
    with pytest.raises(InvalidInput, match="both outcomes"):
        fit_logistic(x, np.zeros_like(x))


def test_curve_reproduces_the_data_rates(calib) -> None:
    cal = calib.calibration
    for g, rate in (("female", 0.365), ("male", 0.474)):
        fit = cal.fits[g]
        assert fit.like_rate == pytest.approx(rate, abs=0.001)
        # Averaged over the data's rating distribution the curve gives the observed rate.
        assert float(fit.prob(fit.ratings).mean()) == pytest.approx(fit.like_rate, abs=0.002)
        assert fit.slope > 0.4  # attractiveness drives yes: the data's strongest effect
        # And it follows the binned data: within 0.1 at every rating with 100+ dates.
        xs, rates, counts = calib.binned(g)
        big = counts >= 100
        assert np.max(np.abs(fit.prob(xs[big]) - rates[big])) < 0.1
    # Nonbinary raters (absent from the data) get the pooled fit.
    assert cal.for_gender("nonbinary") is cal.pooled


def test_rating_quantiles(calib) -> None:
    fit = calib.calibration.fits["male"]
    assert float(fit.rating_at(0.5)) == pytest.approx(float(np.median(fit.ratings)))
    assert float(fit.rating_at(0.0)) == fit.ratings.min()
    assert float(fit.rating_at(1.0)) == fit.ratings.max()


@pytest.mark.parametrize("world", WORLDS)
def test_random_pairs_like_at_the_data_rates(calib, world: str) -> None:
    """Random compatible pairs in each world like each other at the data's rates (within 0.02)."""
    pop = demo_population(300, seed=5)
    compat = pop.compatible()
    w = build_world(world, pop, compat, calib.calibration)
    for g, rate in (("female", 0.365), ("male", 0.474)):
        rows = pop.gender == g
        assert float(w.p[rows][compat[rows]].mean()) == pytest.approx(rate, abs=0.02)
        # And the realised decisions, sampled over all compatible pairs, too.
        from evaluation.simulation import pair_uniform

        i, j = np.nonzero(compat & rows[:, None])
        liked = pair_uniform(11, i, j) < w.p[i, j]
        assert float(liked.mean()) == pytest.approx(rate, abs=0.02)
    assert np.all((w.p >= 0) & (w.p <= 1))
    assert np.all(np.diag(w.p) == 0)


def test_worlds_differ_as_designed(calib) -> None:
    pop = demo_population(300, seed=5)
    compat = pop.compatible()
    q = pop.percentile()
    asp = build_world("aspiration", pop, compat, calib.calibration)
    sim = build_world("similarity", pop, compat, calib.calibration)
    i, j = np.nonzero(compat)
    # Aspiration: everyone likes the more attractive more. Similarity: the close in attractiveness.
    assert np.corrcoef(q[j], asp.p[i, j])[0, 1] > 0.5
    assert abs(np.corrcoef(q[j], sim.p[i, j])[0, 1]) < 0.2
    assert np.corrcoef(-np.abs(q[i] - q[j]), sim.p[i, j])[0, 1] > 0.3
    # Similarity's trait terms are symmetric across the pair, aspiration's are not.
    from evaluation.simulation.worlds import WorldSettings, structural_logits

    ws = WorldSettings()
    s_sim = structural_logits("similarity", pop, compat, calib.calibration, ws)
    s_asp = structural_logits("aspiration", pop, compat, calib.calibration, ws)
    assert np.corrcoef(s_sim[i, j], s_sim[j, i])[0, 1] > 0.9
    assert np.corrcoef(s_asp[i, j], s_asp[j, i])[0, 1] < 0.3
    # Without the per-rater terms, the symmetric world over-matches: that is what the calibration fixes.
    bare = build_world("similarity", pop, compat, calib.calibration, WorldSettings(calibrate_raters=False))
    assert bare.random_pair_mutual > 0.2


def _check_mutual_and_spread(calib, pop: Population, world: str) -> None:
    compat = pop.compatible()
    cal = calib.calibration
    w = build_world(world, pop, compat, cal)
    # Random compatible pairs: mean P(i→j)·P(j→i) at the data's mutual rate (0.165 ± 0.01) ...
    assert cal.mutual_rate == pytest.approx(0.165, abs=0.001)
    assert w.random_pair_mutual == pytest.approx(cal.mutual_rate, abs=0.01)
    i, j = np.nonzero(compat)
    assert float((w.p[i, j] * w.p[j, i]).mean()) == pytest.approx(0.165, abs=0.01)
    # ... each rater gender at its like rate ...
    for g, rate in (("female", 0.365), ("male", 0.474)):
        rows = pop.gender == g
        assert float(w.p[rows][compat[rows]].mean()) == pytest.approx(rate, abs=0.005)
    # ... and raters as unequally choosy as in the data: per-rater yes rates over ~15 random dates each.
    assert cal.rater_yes_sd == pytest.approx(0.256, abs=0.001)
    assert w.rater_yes_sd == pytest.approx(cal.rater_yes_sd, abs=0.01)
    rng = np.random.default_rng(3)
    rates, counts = calib.data.rater_yes_rates()
    sampled = []
    for v in range(pop.n):
        cand = np.flatnonzero(compat[v])
        if cand.size:
            js = rng.choice(cand, size=int(counts[v % counts.size]))
            sampled.append(float((rng.random(js.size) < w.p[v, js]).mean()))
    assert float(np.std(sampled)) == pytest.approx(0.256, abs=0.03)


@pytest.mark.parametrize("world", WORLDS)
def test_random_pairs_match_at_the_data_rate(calib, world: str) -> None:
    _check_mutual_and_spread(calib, demo_population(400, seed=7), world)


@pytest.mark.slow
@pytest.mark.parametrize("world", WORLDS)
def test_random_pairs_match_at_the_data_rate_2000_users(calib, world: str) -> None:
    _check_mutual_and_spread(calib, demo_population(2000, seed=0), world)


def test_a_gender_without_compatible_pairs_is_left_out(calib) -> None:
    pop = Population(
        user_ids=["f", "m", "nb"],
        gender=np.array(["female", "male", "nonbinary"], dtype=object),
        age=np.array([30, 31, 29]),
        seeking=[("male",), ("female",), ("female", "male", "nonbinary")],
        age_min=np.array([18, 18, 18]),
        age_max=np.array([99, 99, 99]),
        attractiveness=np.array([0.2, 0.5, 0.8]),
        looks=np.eye(3),
    )
    compat = pop.compatible()
    assert compat.tolist() == [[False, True, False], [True, False, False], [False, False, False]]
    w = build_world("aspiration", pop, compat, calib.calibration)
    assert set(w.intercepts) == {"female", "male"}
    assert np.all(w.p[2] == 0)
    assert w.p[0, 1] == pytest.approx(0.365, abs=1e-3)  # the one compatible pair carries the data's rate
