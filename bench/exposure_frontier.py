"""The share-of-lift / exposure-Gini frontier of the truth-based reference: the per-viewer oracle with a
per-candidate impression cap per round, swept.

Same population, worlds, attention, newcomers, rounds and seed as ``matcher simulate`` (the strategies that
need no store: random, oracle, oracle_capped), so each row is what ``simulate --strategy oracle_capped
--exposure-cap C`` reports. If even this reference cannot keep the share of the oracle's mutual lift at a
target with exposure Gini <= random's + 0.10, no engine can (it knows less than the true P). Prints markdown.

Two reference families: ``capC`` (the per-viewer oracle, at most C impressions per candidate per round)
and ``logged capC`` (the same for the oracle that also knows the logged replies, ``LoggedOracle``).

    python bench/exposure_frontier.py --population /tmp/h2/pop1000 --users 1000 --world aspiration \\
        --caps 4 6 8 10 12 15 20
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.settings import Settings
from evaluation.calibration import fit_calibration
from evaluation.simulation import Population, build_world, evaluate, run_rounds
from evaluation.simulation.rounds import newcomer_joins
from evaluation.simulation.run import DEFAULT_ATTENTION, DEFAULT_NEWCOMER_ROUND, DEFAULT_NEWCOMER_SHARE
from evaluation.simulation.strategies import (
    ExposureCapped,
    Strategy,
    best_k,
    open_candidates,
    oracle_strategy,
    random_strategy,
)


class LoggedOracle:
    """The oracle that also knows the logged replies: ``P(i→j) · r(j, i)``, ``r`` = 1 / 0 where ``j`` already
    liked / passed ``i`` in an earlier round, else the true ``P(j→i)``. The engine sees those replies too
    (a logged like of the asker replaces P(B→A)), so this, not the plain oracle, bounds what it can reach."""

    def __init__(self, name: str, compat: np.ndarray, p: np.ndarray) -> None:
        self.name = name
        self._compat, self._p = compat, p
        self._reply = p.T.copy()  # reply[i, j] = P(j→i) until j decides about i

    def start_round(self, round_index: int) -> None:
        if round_index == 0:
            self._reply = self._p.T.copy()

    def observe(self, round_index: int, viewer: np.ndarray, candidate: np.ndarray, like: np.ndarray) -> None:
        self._reply[candidate, viewer] = like.astype(np.float64)

    def pick(self, viewer: int, k: int, exclude: set[int], liked: Sequence[int]) -> list[int]:
        cand = open_candidates(self._compat[viewer], exclude)
        if cand.size == 0:
            return []
        return best_k(cand, self._p[viewer, cand] * self._reply[viewer, cand], k).tolist()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--population", type=Path, required=True, help="a make-demo-data folder (made if missing)")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--world", action="append", default=None)
    ap.add_argument("--caps", type=int, nargs="+", default=[4, 6, 8, 10, 12, 15, 20, 30])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--boot", type=int, default=200)
    a = ap.parse_args()

    settings = Settings(progress=False)  # type: ignore[call-arg]
    if not (a.population / "truth.json").is_file():
        from evaluation.demo_data import make_demo_data

        make_demo_data(a.population, users=a.users, seed=a.seed, progress=False)
    pop = Population.from_dir(a.population, settings)
    compat = pop.compatible()
    cal = fit_calibration().calibration
    joins = newcomer_joins(pop.n, DEFAULT_NEWCOMER_SHARE, DEFAULT_NEWCOMER_ROUND, a.rounds, a.seed)
    fetch = -(-pop.n // a.k)
    for wname in a.world or ["aspiration", "similarity"]:
        world = build_world(wname, pop, compat, cal, seed=a.seed)
        strats: list[Strategy] = [random_strategy(compat, a.seed), oracle_strategy(compat, world)]
        p = world.p * compat
        strats.append(LoggedOracle("logged", compat, p))
        for cap in a.caps:
            capped = ExposureCapped(f"cap{cap}", oracle_strategy(compat, world), cap, pop.n, fetch=fetch)
            strats.append(capped)
        for cap in a.caps:
            strats.append(ExposureCapped(f"logged cap{cap}", LoggedOracle("l", compat, p), cap, pop.n, fetch=fetch))
        imps = run_rounds(
            strats, world, rounds=a.rounds, k=a.k, seed=a.seed, compat=compat, attention=DEFAULT_ATTENTION, joins=joins
        )
        res = evaluate(imps, pop.n, n_boot=a.boot, seed=a.seed, joins=joins, k=a.k, attention=DEFAULT_ATTENTION)
        rnd_gini = next(r for r in res if r.strategy == "random").metrics["gini"].value
        print(f"\n## {wname}: {pop.n} users, {a.rounds} rounds, k {a.k}, seed {a.seed}, attention {DEFAULT_ATTENTION}")
        print(f"random exposure Gini {rnd_gini:.3f}: the target is Gini <= {rnd_gini + 0.10:.3f}\n")
        print(
            "| reference | exposure Gini | Gini − random's | share of oracle's mutual lift | mutual rate "
            "| success | effective / user | shortfall |\n|---|---|---|---|---|---|---|---|"
        )
        for r in res:
            m = r.metrics
            share = r.oracle_share.get("mutual_rate")
            success = m["mutual_rate"].value / m["like_rate"].value
            print(
                f"| {r.strategy} | {m['gini'].value:.3f} | {m['gini'].value - rnd_gini:+.3f} "
                f"| {share.fmt(2) if share else '–'} | {m['mutual_rate'].value:.3f} | {success:.3f} "
                f"| {m['effective_per_user'].value:.2f} | {r.shortfall} |"
            )


if __name__ == "__main__":
    main()
