"""Strategies that learn from the logged decisions: fed back round after round, each on its own store, and
blind to the population's hidden traits."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.feedback import LIKE, PASS, all_events
from engine.settings import Settings
from engine.store import open_store
from evaluation.calibration import fit_calibration
from evaluation.simulation import Population, build_world, run_rounds
from evaluation.simulation.feedback import ROUND_S
from evaluation.simulation.run import shared_strategies, strategy_stores
from ingestion.job import run_ingest

LEARNING_IDS = ("engine", "engine_capped", "qdrant_average", "qdrant_best", "recon")

_WATCH: dict[str, Any] = {"on": False, "opened": []}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _WATCH["on"] and event == "open" and args and "truth.json" in str(args[0]):
        _WATCH["opened"].append(str(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only records while _WATCH["on"]


@pytest.fixture(scope="module")
def blind_run(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path, tiny_encoder) -> Iterator[dict[str, Any]]:
    """The population's traits load into the world; then truth.json is gone and only the store is left."""
    tmp_path = tmp_path_factory.mktemp("blind")
    pop_dir = tmp_path / "pop"
    shutil.copytree(demo_dir, pop_dir)
    settings = Settings(store_path=tmp_path / "store", progress=False)  # type: ignore[call-arg]
    pop = Population.from_dir(pop_dir, settings)
    compat = pop.compatible()
    world = build_world("aspiration", pop, compat, fit_calibration().calibration)
    (pop_dir / "truth.json").unlink()  # what the strategies could still read would now fail loudly
    store = open_store(settings)
    run_ingest(pop_dir, pop_dir / "metadata.csv", settings=settings, encoder=tiny_encoder, store=store)
    own = strategy_stores(LEARNING_IDS, store, settings, tmp_path)
    _WATCH.update(on=True, opened=[])
    try:
        shared = shared_strategies(
            (*LEARNING_IDS, "similarity"), store, settings, pop, rounds=3, k=3, cap=3, engine_likes=False, own=own
        )
        imps = run_rounds(list(shared.values()), world, rounds=3, k=3, seed=0, compat=compat)
        opened = list(_WATCH["opened"])
    finally:
        _WATCH["on"] = False
    yield {"imps": imps, "own": own, "pop": pop, "opened": opened, "shared": shared}
    for st, _ in own.values():
        st.close()
    store.close()


def test_strategies_cannot_reach_the_hidden_traits(blind_run: dict[str, Any]) -> None:
    assert blind_run["opened"] == []  # no strategy tried to open truth.json
    for name, strat in blind_run["shared"].items():
        held = [v for v in vars(getattr(strat, "_base", strat)).values() if isinstance(v, Population)]
        assert not held, f"{name} holds the population (hidden traits)"
    imps = blind_run["imps"]
    assert set(imps) == {*LEARNING_IDS, "similarity"}
    assert all(imps[s].viewer.size > 0 and imps[s].incompatible == 0 for s in imps)


def test_each_round_reaches_the_strategy_store_as_likes_and_passes(blind_run: dict[str, Any]) -> None:
    ids = blind_run["pop"].user_ids
    for name in LEARNING_IDS:
        imp = blind_run["imps"][name]
        store, _ = blind_run["own"][name]
        got = {(e.viewer_id, e.candidate_id): (e.decision, e.ts) for e in all_events(store)}
        want = {
            (ids[v], ids[c]): (LIKE if lk else PASS, float(r) * ROUND_S)
            for v, c, lk, r in zip(
                imp.viewer.tolist(), imp.candidate.tolist(), imp.like.tolist(), imp.round.tolist(), strict=True
            )
        }
        assert got == want, name  # every impression of this strategy, and no other strategy's
        assert {d for d, _ in got.values()} == {LIKE, PASS}
    stores = {id(blind_run["own"][n][0]) for n in LEARNING_IDS}
    assert len(stores) == len(LEARNING_IDS)  # one store each: no strategy sees another's decisions
