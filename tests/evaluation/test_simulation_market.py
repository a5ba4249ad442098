"""The simulation as a market: limited attention and effective matches."""

from __future__ import annotations

import numpy as np
import pytest
from demo_population import demo_population as _population

from engine.errors import InvalidInput
from evaluation.calibration import Calibration, fit_calibration
from evaluation.simulation import (
    Population,
    Strategy,
    build_world,
    evaluate,
    oracle_strategy,
    popularity_strategy,
    random_strategy,
    run_rounds,
)
from evaluation.simulation.rounds import attention_seen


@pytest.fixture(scope="module")
def cal() -> Calibration:
    return fit_calibration().calibration


@pytest.fixture(scope="module")
def pop() -> Population:
    return _population(300, seed=5)


def test_no_receiver_answers_more_than_b(cal: Calibration, pop: Population) -> None:
    compat = pop.compatible()
    world = build_world("aspiration", pop, compat, cal)
    b = 3
    strats: list[Strategy] = [popularity_strategy(compat, pop), random_strategy(compat, 0)]
    imps = run_rounds(strats, world, rounds=3, k=8, seed=0, compat=compat, attention=b)
    pop_imp = imps["popularity"]
    assert pop_imp.seen is not None
    for imp in imps.values():
        assert imp.seen is not None
        assert not np.any(imp.seen & ~imp.like)  # only likes are looked at
        for r in range(3):
            sel = imp.round == r
            seen_per = np.bincount(imp.candidate[sel], weights=imp.seen[sel], minlength=pop.n)
            liked_per = np.bincount(imp.candidate[sel], weights=imp.like[sel], minlength=pop.n)
            assert seen_per.max() <= b
            # A receiver with at most B likes looks at all of them; one with more looks at exactly B.
            assert np.array_equal(seen_per, np.minimum(liked_per, b))
    # Most-attractive-first floods the top receivers: attention loses matches there.
    assert pop_imp.effective.sum() < pop_imp.mutual.sum()
    assert np.all(pop_imp.effective <= pop_imp.mutual)


def test_attention_looks_at_the_first_to_arrive() -> None:
    # Receiver 7 gets four likes in round 0 (impressions 0, 2, 3, 5) and one in round 1; B = 2.
    cand = np.array([7, 7, 7, 7, 1, 7, 7])
    rnd = np.array([0, 0, 0, 0, 0, 0, 1])
    like = np.array([True, False, True, True, True, True, True])
    seen = attention_seen(cand, rnd, like, 2)
    assert seen is not None
    assert seen.tolist() == [True, False, True, False, True, False, True]
    assert attention_seen(cand, rnd, like, None) is None
    with pytest.raises(InvalidInput, match="attention"):
        attention_seen(cand, rnd, like, 0)


def test_effective_matches_in_the_metrics(cal: Calibration, pop: Population) -> None:
    compat = pop.compatible()
    world = build_world("similarity", pop, compat, cal)
    strats: list[Strategy] = [random_strategy(compat, 0), oracle_strategy(compat, world)]
    unlimited = evaluate(run_rounds(strats, world, rounds=2, k=5, seed=0), pop.n, n_boot=100, seed=0)
    for s in unlimited:  # no attention limit: every mutual pair is an effective match
        assert s.metrics["effective_per_user"].value == pytest.approx(s.metrics["matches_per_user"].value)
    tight = evaluate(run_rounds(strats, world, rounds=2, k=5, seed=0, attention=1), pop.n, n_boot=100, seed=0)
    by = {s.strategy: s for s in tight}
    assert by["oracle"].metrics["effective_per_user"].value < by["oracle"].metrics["matches_per_user"].value
    e = by["oracle"].metrics["effective_rate"]
    assert e.lo <= e.value <= e.hi


@pytest.mark.parametrize("world_name", ["similarity", "aspiration", "mixed"])
def test_market_reference_never_below_the_oracle(cal: Calibration, pop: Population, world_name: str) -> None:
    from evaluation.simulation.market import MarketReference, SinkhornMarket

    compat = pop.compatible()
    world = build_world(world_name, pop, compat, cal)
    k = 10
    for b in (3, 8):
        strats: list[Strategy] = [
            oracle_strategy(compat, world),
            MarketReference(compat, world, b),
            SinkhornMarket(compat, world, b),
        ]
        imps = run_rounds(strats, world, rounds=3, k=k, seed=0, compat=compat, attention=b)
        oracle = imps["oracle"].effective.sum()
        for name in ("market", "sinkhorn"):
            assert imps[name].effective.sum() >= oracle, (world_name, b, name, imps[name].effective.sum(), oracle)
            assert imps[name].shortfall == imps["oracle"].shortfall  # every viewer still gets k
    # Congested (B = 3, aspiration: everyone wants the same few): the allocation leaves far less unseen.
    if world_name == "aspiration":
        imps = run_rounds(
            [oracle_strategy(compat, world), SinkhornMarket(compat, world, 3)],
            world,
            rounds=3,
            k=k,
            seed=0,
            attention=3,
        )
        assert imps["sinkhorn"].effective.sum() > 1.2 * imps["oracle"].effective.sum()
    # Unlimited attention: both references are the oracle, pick for pick.
    same = run_rounds(
        [oracle_strategy(compat, world), MarketReference(compat, world, None), SinkhornMarket(compat, world, None)],
        world,
        rounds=2,
        k=k,
        seed=0,
    )
    assert np.array_equal(same["oracle"].candidate, same["market"].candidate)
    assert np.array_equal(same["oracle"].candidate, same["sinkhorn"].candidate)


def test_sinkhorn_plan_meets_its_constraints(cal: Calibration, pop: Population) -> None:
    from evaluation.simulation.market import SinkhornMarket

    compat = pop.compatible()
    world = build_world("aspiration", pop, compat, cal)
    sk = SinkhornMarket(compat, world, 4, top_n=30)
    x = sk.allocation(5)
    pool = np.minimum(5, compat.sum(axis=1))
    assert np.allclose(x.sum(axis=1)[pool >= 5], 5.0, atol=0.05)  # each viewer's k (where 30 are open)
    assert np.all((x >= 0) & (x <= 1.0 + 1e-9)) and not np.any(x[~compat] > 0)
    assert np.all((x > 0).sum(axis=1) <= 30)  # only the top-N carry mass
    load = (x * world.p).sum(axis=0)
    # Receivers' expected likes over their attention: a small fraction of what the oracle's top-5 sends.
    top = np.zeros_like(x)
    mutual = np.where(compat, world.mutual(), -1.0)
    idx = np.argsort(-mutual, axis=1)[:, :5]
    top[np.repeat(np.arange(pop.n), 5), idx.ravel()] = 1.0
    top *= compat
    excess = float(np.maximum(load - 4.0, 0).sum())
    oracle_excess = float(np.maximum((top * world.p).sum(axis=0) - 4.0, 0).sum())
    assert excess < 0.1 * oracle_excess, (excess, oracle_excess)
    with pytest.raises(InvalidInput, match="sinkhorn"):
        SinkhornMarket(compat, world, 0)


def test_cli_attention_flag_reaches_simulate(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import evaluation.simulation as sim
    from engine.settings import Settings
    from matcher.cli import build_parser

    parser = build_parser()
    seen: dict[str, object] = {}

    class _Result:
        report_path = "r.md"
        timings = {"total_s": 0.0}

        def table(self) -> str:
            return ""

    def fake_simulate(out: object, **kw: object) -> _Result:
        seen.update(kw)
        return _Result()

    monkeypatch.setattr(sim, "simulate", fake_simulate)
    base = "simulate --out x --world mixed --mixed-weight 0.3".split()
    for flag, want in ((["--attention", "15"], 15), (["--attention", "none"], None), ([], 20)):
        args = parser.parse_args(base + flag)
        assert args.func(args, Settings(progress=False)) == 0  # type: ignore[call-arg]
        assert seen["attention"] == want
        assert seen["worlds"] == ("mixed",)
        assert (seen["newcomer_share"], seen["newcomer_round"]) == (0.1, 3)
        assert seen["world_settings"].mixed_weight == 0.3  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--attention", "0"])
    assert "at least 1" in capsys.readouterr().err


def test_two_way_intervals_cover_the_seed_to_seed_spread(cal: Calibration) -> None:
    """Eight seeds (population, easiness, decisions) at 300 users: the spread of each strategy's result over
    the seeds is what an interval from one seed must cover. Resampling viewers only is too narrow for the
    congested strategies; resampling viewers and candidates is not."""
    keys = ("mutual_rate", "effective_per_user")
    got: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    for seed in range(8):
        pop = _population(300, seed)
        compat = pop.compatible()
        world = build_world("aspiration", pop, compat, cal, seed=seed)
        strats: list[Strategy] = [
            random_strategy(compat, seed),
            popularity_strategy(compat, pop),
            oracle_strategy(compat, world),
        ]
        imps = run_rounds(strats, world, rounds=3, k=5, seed=seed, compat=compat, attention=5)
        for boot in ("two_way", "viewer"):
            for s in evaluate(imps, pop.n, n_boot=300, seed=seed, bootstrap=boot):
                if s.strategy == "random":
                    continue
                for key in keys:
                    e = s.metrics[key]
                    got.setdefault((boot, s.strategy, key), []).append((e.value, e.lo, e.hi))
                e = s.lift["mutual_rate"]
                got.setdefault((boot, s.strategy, "lift"), []).append((e.value, e.lo, e.hi))
    ratio: dict[tuple[str, str, str], float] = {}
    for (boot, strat, key), rows in got.items():
        a = np.array(rows)
        seed_sd = float(a[:, 0].std(ddof=1))
        se = float(((a[:, 2] - a[:, 1]) / (2 * 1.96)).mean())
        ratio[(boot, strat, key)] = se / seed_sd
        if boot == "two_way":
            assert se >= 0.9 * seed_sd, (strat, key, se, seed_sd)
            # Each seed's 95 % interval holds the mean over the seeds (7 of 8 at least).
            inside = (a[:, 1] <= a[:, 0].mean()) & (a[:, 0].mean() <= a[:, 2])
            assert inside.sum() >= 7, (strat, key, inside)
    # Viewer-only intervals are narrower everywhere, and too narrow for most-attractive-first.
    for strat in ("popularity", "oracle"):
        for key in (*keys, "lift"):
            assert ratio[("viewer", strat, key)] < ratio[("two_way", strat, key)]
    assert ratio[("viewer", "popularity", "effective_per_user")] < 0.9
    with pytest.raises(InvalidInput, match="bootstrap"):
        evaluate(imps, 300, n_boot=10, bootstrap="impressions")


def test_newcomers_enter_at_the_round_asked(cal: Calibration, pop: Population, tmp_path) -> None:
    from evaluation.simulation.metrics import newcomer_stats
    from evaluation.simulation.rounds import newcomer_joins

    compat = pop.compatible()
    world = build_world("similarity", pop, compat, cal)
    joins = newcomer_joins(pop.n, 0.1, 3, rounds=5, seed=0)
    assert joins is not None
    late = np.flatnonzero(joins > 0)
    assert late.size == 30 and set(joins[late].tolist()) == {2}  # round 3 counted from 1
    k = 6
    strats: list[Strategy] = [random_strategy(compat, 0), oracle_strategy(compat, world)]
    imps = run_rounds(strats, world, rounds=5, k=k, seed=0, compat=compat, attention=20, joins=joins)
    for imp in imps.values():
        is_late_v, is_late_c = joins[imp.viewer] > 0, joins[imp.candidate] > 0
        # Nobody sees or is shown a newcomer before round index 2, and newcomers are served from it on.
        assert not np.any((is_late_v | is_late_c) & (imp.round < 2))
        first = (imp.round == 2) & is_late_v
        with_pool = late[compat[late].sum(axis=1) >= k]  # (one newcomer here has no compatible user)
        assert set(with_pool.tolist()) <= set(imp.viewer[first].tolist()) <= set(late.tolist())
        assert np.all(np.bincount(imp.viewer[first], minlength=pop.n)[with_pool] == k)
        assert np.any(is_late_c & (imp.round == 2))
        stats = newcomer_stats(imp, joins, k)
        assert stats["newcomers"] == 30
        recs = np.bincount(imp.viewer[first], minlength=pop.n)[late]
        assert stats["first_round_recommendations"] == pytest.approx(float(recs.mean()))
        exposure = np.bincount(imp.candidate[(imp.round == 2)], minlength=pop.n)[late]
        assert stats["shown_k_share"] == pytest.approx(float((exposure >= k).mean()))
        assert "shown_possible_share" not in stats  # without the filter, what the market allows is unknown
        # With it: a newcomer with fewer than k compatible users can be shown at most that many times.
        with_compat = newcomer_stats(imp, joins, k, compat)
        viewers = compat[:, late].sum(axis=0)
        assert with_compat["fewer_viewers_than_k"] == float((viewers < k).sum()) >= 1
        bound = np.minimum(k, viewers)
        assert with_compat["shown_possible_share"] == pytest.approx(float((exposure >= bound).mean()))
        assert with_compat["shown_possible_share"] >= with_compat["shown_k_share"]
        assert stats["success_ratio"] == pytest.approx(
            stats["matches_since_arrival"] / stats["matches_since_arrival_established"]
        )
    # The run's table and figure show them.
    from evaluation.simulation import SimulationResult, WorldResult
    from evaluation.simulation.figures import plot_newcomers

    results = evaluate(imps, pop.n, n_boot=20, seed=0, joins=joins, k=k)
    wr = WorldResult("similarity", results, world.intercepts, world.targets, world.random_pair_like, 0.165, {})
    sim = SimulationResult({}, [wr], 0.165)
    assert "Newcomers:" in sim.table() and "newcomers shown ≥ k times" in sim.table()
    fig = plot_newcomers(sim, tmp_path / "newcomers.png")
    assert fig is not None and fig.stat().st_size > 1000
    no_late = evaluate(run_rounds(strats, world, rounds=2, k=k, seed=0), pop.n, n_boot=20)
    quiet = SimulationResult({}, [WorldResult("similarity", no_late, {}, {}, {}, 0.165, {})], 0.165)
    assert "Newcomers:" not in quiet.table() and plot_newcomers(quiet, tmp_path / "none.png") is None
    # Without the arrivals the same run shows the newcomers from round 0.
    everyone = run_rounds(strats, world, rounds=3, k=k, seed=0, compat=compat)["random"]
    assert np.any(np.isin(everyone.viewer[everyone.round == 0], late))
    assert newcomer_joins(pop.n, 0.1, 3, rounds=2, seed=0) is None  # the run ends before they would arrive
    with pytest.raises(InvalidInput, match="newcomer share"):
        newcomer_joins(pop.n, 1.5, 3, rounds=5, seed=0)
    with pytest.raises(InvalidInput, match="joins"):
        run_rounds(strats, world, rounds=1, k=k, seed=0, joins=joins[:-1])


def test_fairness_figures(cal: Calibration, pop: Population) -> None:
    from evaluation.simulation import Impressions
    from evaluation.simulation.metrics import envious_users, user_matches

    # Hand-made: viewer 0 was shown user 2, viewer 1 was shown user 3; 0 would rather have had 1's list.
    t, f = True, False
    imp = Impressions(
        viewer=np.array([0, 1, 2]),
        candidate=np.array([2, 3, 0]),
        round=np.zeros(3, dtype=np.int64),
        like=np.array([t, t, t]),
        back=np.array([t, f, t]),
        shortfall=0,
    )
    assert user_matches(imp, 4).tolist() == [2.0, 0.0, 2.0, 0.0]  # 0-2 matched twice (both directions)
    mutual = np.zeros((4, 4))
    mutual[0, 2] = mutual[2, 0] = 0.1
    mutual[0, 3] = mutual[3, 0] = 0.5
    assert envious_users(imp, mutual).tolist() == [True, False, False, False]
    mutual[0, 3] = mutual[3, 0] = 0.05
    assert not envious_users(imp, mutual).any()

    compat = pop.compatible()
    world = build_world("aspiration", pop, compat, cal)
    strats: list[Strategy] = [
        random_strategy(compat, 0),
        popularity_strategy(compat, pop),
        oracle_strategy(compat, world),
    ]
    imps = run_rounds(strats, world, rounds=3, k=5, seed=0, compat=compat, attention=5)
    res = {s.strategy: s for s in evaluate(imps, pop.n, n_boot=100, seed=0, mutual=world.mutual() * compat)}
    for s in res.values():
        m = user_matches(imps[s.strategy], pop.n)
        assert s.metrics["zero_match_share"].value == pytest.approx(float((m == 0).mean()))
        e = s.metrics["match_gini"]
        assert 0.0 < e.value < 1.0 and e.lo <= e.value <= e.hi
    # The oracle gives each viewer the list with the most expected matches: no one envies another's.
    assert res["oracle"].metrics["envy_share"].value == 0.0
    assert res["random"].metrics["envy_share"].value > 0.5
    # Most-attractive-first leaves more users without a match than random does (attention B = 5).
    assert res["popularity"].metrics["zero_match_share"].value > res["random"].metrics["zero_match_share"].value
    # Without the world's P there is no envy figure.
    assert np.isnan(evaluate(imps, pop.n, n_boot=10)[0].metrics["envy_share"].value)
