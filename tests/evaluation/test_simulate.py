"""The like-rate simulation: the machinery on a synthetic population, and a small run through the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from demo_population import demo_population

from engine.errors import InvalidInput
from engine.settings import Settings
from evaluation.calibration import fit_calibration
from evaluation.simulation import (
    STRATEGIES,
    ExposureCapped,
    SimulationResult,
    Strategy,
    build_world,
    evaluate,
    oracle_strategy,
    pair_uniform,
    popularity_strategy,
    random_strategy,
    run_rounds,
    simulate,
)


@pytest.fixture(scope="module")
def cal():  # -> Calibration
    return fit_calibration().calibration


def test_compatible_is_the_engine_filter() -> None:
    from engine.compatibility import Profile

    pop = demo_population(80, seed=2)
    profiles = [
        Profile(
            u, str(pop.gender[i]), int(pop.age[i]), pop.seeking[i], int(pop.age_min[i]), int(pop.age_max[i])
        )
        for i, u in enumerate(pop.user_ids)
    ]
    expected = np.array(
        [[i != j and a.compatible(b) for j, b in enumerate(profiles)] for i, a in enumerate(profiles)]
    )
    assert np.array_equal(pop.compatible(), expected)
    assert expected.any()


def test_pair_uniform_is_a_fixed_uniform() -> None:
    i = np.repeat(np.arange(300), 300)
    j = np.tile(np.arange(300), 300)
    u = pair_uniform(5, i, j)
    assert np.all((u >= 0) & (u < 1))
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    assert np.array_equal(u, pair_uniform(5, i, j))
    assert not np.array_equal(u, pair_uniform(6, i, j))
    # (i, j) and (j, i) are different draws: the two decisions of a pair are independent.
    assert abs(np.corrcoef(u, pair_uniform(5, j, i))[0, 1]) < 0.02


def test_rounds_are_deterministic_and_share_outcomes(cal) -> None:
    pop = demo_population(150, seed=4)
    compat = pop.compatible()
    world = build_world("aspiration", pop, compat, cal)

    def run() -> dict:
        strats: list[Strategy] = [
            random_strategy(compat, 1),
            popularity_strategy(compat, pop),
            oracle_strategy(compat, world),
        ]
        return run_rounds(strats, world, rounds=3, k=4, seed=1, compat=compat)

    a, b = run(), run()
    for name in a:
        assert np.array_equal(a[name].candidate, b[name].candidate)
        assert np.array_equal(a[name].like, b[name].like)
        assert a[name].incompatible == 0
        # Never the same candidate twice to one viewer.
        pairs = set(zip(a[name].viewer.tolist(), a[name].candidate.tolist(), strict=True))
        assert len(pairs) == a[name].viewer.size
    # Common random numbers: a pair shown by two strategies has the same outcome in both.
    rnd, orc = a["random"], a["oracle"]
    r = {(v, c): (lk, bk) for v, c, lk, bk in zip(rnd.viewer, rnd.candidate, rnd.like, rnd.back, strict=True)}
    shared = 0
    for v, c, lk, bk in zip(orc.viewer, orc.candidate, orc.like, orc.back, strict=True):
        if (v, c) in r:
            shared += 1
            assert r[(v, c)] == (lk, bk)
    assert shared > 0


def test_random_strategy_likes_at_the_data_rates(cal) -> None:
    """Random recommendations within the filter are liked at the speed-dating rates (within 0.02)."""
    pop = demo_population(600, seed=1)
    compat = pop.compatible()
    for name in ("similarity", "aspiration"):
        world = build_world(name, pop, compat, cal)
        imp = run_rounds([random_strategy(compat, 0)], world, rounds=5, k=10, seed=0)["random"]
        for g, rate in (("female", 0.365), ("male", 0.474)):
            sel = pop.gender[imp.viewer] == g
            assert float(imp.like[sel].mean()) == pytest.approx(rate, abs=0.02), (name, g)


def test_exposure_cap_holds(cal) -> None:
    pop = demo_population(150, seed=4)
    compat = pop.compatible()
    world = build_world("aspiration", pop, compat, cal)
    capped = ExposureCapped("capped", popularity_strategy(compat, pop), 3, pop.n)
    strats: list[Strategy] = [popularity_strategy(compat, pop), capped]
    imps = run_rounds(strats, world, rounds=2, k=4, seed=0)
    for r in range(2):
        shown = imps["capped"]
        counts = np.bincount(shown.candidate[shown.round == r], minlength=pop.n)
        assert counts.max() <= 3
        free = imps["popularity"]
        assert np.bincount(free.candidate[free.round == r], minlength=pop.n).max() > 3
    res = {s.strategy: s for s in evaluate(imps, pop.n, n_boot=200, seed=0)}
    # Spreading exposure lowers its concentration.
    assert res["capped"].metrics["gini"].value < res["popularity"].metrics["gini"].value


def test_evaluate_lift_and_oracle_share(cal) -> None:
    pop = demo_population(300, seed=3)
    compat = pop.compatible()
    world = build_world("similarity", pop, compat, cal)
    strats = [random_strategy(compat, 0), popularity_strategy(compat, pop), oracle_strategy(compat, world)]
    imps = run_rounds(strats, world, rounds=3, k=5, seed=0)
    res = {s.strategy: s for s in evaluate(imps, pop.n, n_boot=300, seed=0, mutual=world.mutual() * compat)}
    assert res["random"].lift["mutual_rate"].value == pytest.approx(1.0)
    assert res["oracle"].oracle_share["mutual_rate"].value == pytest.approx(1.0)
    assert res["random"].oracle_share["mutual_rate"].value == pytest.approx(0.0)
    # In the similarity world the oracle beats random clearly; its interval says so.
    assert res["oracle"].lift["mutual_rate"].lo > 1.2
    for s in res.values():
        for key, e in s.metrics.items():
            assert e.lo <= e.value + 1e-9 and e.value <= e.hi + 1e-9, (s.strategy, key)
    # Mutual rate counts impressions where both like: never above the one-way like rate.
    assert res["oracle"].metrics["mutual_rate"].value <= res["oracle"].metrics["like_rate"].value


def _strip(d: dict) -> dict:
    d = json.loads(json.dumps(d, default=str))
    d.pop("timings"), d.pop("report_path")
    d["ingest"].pop("stage_seconds")
    return d


def _run(out: Path, demo_dir: Path, tiny_encoder, engine_likes: bool = False) -> SimulationResult:
    settings = Settings(progress=False)  # type: ignore[call-arg]
    return simulate(
        out,
        settings=settings,
        rounds=2,
        k=3,
        seed=5,
        population=demo_dir,
        encoder=tiny_encoder,
        n_boot=50,
        engine_likes=engine_likes,
    )


def test_simulate_through_the_pipeline(tmp_path: Path, demo_dir: Path, tiny_encoder) -> None:
    """Photos -> encoder -> store -> recommend(likes=...), both worlds, every strategy, and the report."""
    a = _run(tmp_path / "a", demo_dir, tiny_encoder, engine_likes=True)
    assert [w.world for w in a.worlds] == ["similarity", "aspiration", "mixed"]
    n_users = len(json.loads((demo_dir / "truth.json").read_text())["users"])
    assert a.config["users"] == n_users
    assert a.ingest["counts"]["users_written"] == n_users
    for w in a.worlds:
        assert [s.strategy for s in w.strategies] == list(STRATEGIES)
        for s in w.strategies:
            assert s.incompatible == 0, s.strategy  # the engine serves only what the filter allows
            assert s.n_impressions > 0
            for key, e in s.metrics.items():
                assert 0.0 <= e.value <= (2 * 3 if key in ("matches_per_user", "effective_per_user") else 1.0)
        assert w.random_pair_like["female"] == pytest.approx(0.365, abs=0.005)
    report = (tmp_path / "a" / "report.md").read_text()
    assert "## World: similarity" in report and "## World: aspiration" in report and "## World: mixed" in report
    assert "engine (reciprocal rerank)" in report
    for fig in ("calibration.png", "strategies_similarity.png", "strategies_aspiration.png", "strategies_mixed.png"):
        assert (tmp_path / "a" / "figures" / fig).stat().st_size > 1000
    assert "| strategy |" in a.table()


@pytest.mark.slow
def test_simulate_is_deterministic_per_seed(tmp_path: Path, demo_dir: Path, tiny_encoder) -> None:
    a = _run(tmp_path / "a", demo_dir, tiny_encoder)
    b = _run(tmp_path / "b", demo_dir, tiny_encoder)
    assert _strip(a.to_dict()) == _strip(b.to_dict())
    # A re-run over the same folder reuses the stored vectors and gives the same results.
    c = _run(tmp_path / "a", demo_dir, tiny_encoder)
    assert c.ingest["counts"]["photos_skipped"] == c.ingest["counts"]["photos_seen"] > 0
    assert _strip(a.to_dict())["worlds"] == _strip(c.to_dict())["worlds"]


def test_truth_encoder_embeds_the_owner_traits(demo_dir: Path) -> None:
    """The ceiling encoder: every photo of a user gets that user's trait vector, photos of others differ."""
    import csv as csv_mod

    from evaluation.simulation import TruthEncoder
    from ingestion.reader import decode_photo, read_photo

    settings = Settings(progress=False)  # type: ignore[call-arg]
    enc = TruthEncoder(demo_dir, settings, dim=24)
    rows = list(csv_mod.DictReader((demo_dir / "metadata.csv").open()))
    images, owners = [], []
    for row in rows[:12]:
        raw = read_photo(demo_dir.resolve(), row["image_path"], settings.images)
        images.append(decode_photo(raw, settings.images).image)  # type: ignore[arg-type,union-attr]
        owners.append(row["user_id"])
    v = enc.embed(images)
    assert v.shape == (12, 24) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    for a in range(12):
        for b in range(12):
            assert np.allclose(v[a], v[b]) == (owners[a] == owners[b])
    from PIL import Image

    with pytest.raises(InvalidInput, match="not in the population"):
        enc.embed([Image.new("RGB", (64, 64))])


def test_cli_parses_simulate_and_replay() -> None:
    from matcher.cli import build_parser

    argv = "simulate --users 2000 --rounds 3 --k 10 --seed 4 --out x --world aspiration".split()
    args = build_parser().parse_args(argv)
    assert (args.users, args.rounds, args.k, args.seed) == (2000, 3, 10, 4)
    assert (args.out, args.world) == (Path("x"), ["aspiration"])
    assert args.exposure_cap is None and args.encoder is None and not args.engine_likes
    args = build_parser().parse_args(["replay", "log.csv", "--k", "5"])
    assert (args.log, args.k) == (Path("log.csv"), 5)
