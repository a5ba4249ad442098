"""The main job end to end (`matcher demo`), at a tiny size."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from engine.errors import InvalidInput
from engine.settings import Settings
from matcher.demo import DemoSettings, demo_train_settings, run_demo

TINY = DemoSettings(users=30, epochs=1, sim_users=30, sim_rounds=1, sim_k=3, show_users=2, show_k=3)


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(InvalidInput, match="not made by 'matcher demo'"):
        run_demo(tmp_path, Settings(progress=False), TINY, say=lambda _: None)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


@pytest.mark.slow
def test_demo_runs_end_to_end_twice(tmp_path: Path) -> None:
    lines: list[str] = []
    out = tmp_path / "demo"
    for _ in range(2):  # the second run starts afresh in the same folder
        lines.clear()
        result = run_demo(out, Settings(progress=False), TINY, say=lines.append)
    with (out / "data" / "metadata.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert result.stored_photos == len(rows)
    assert result.stored_users == len({r["user_id"] for r in rows})
    assert len(result.recommended) == TINY.show_users
    for uid, matches in result.recommended.items():
        assert uid not in {m.user_id for m in matches}
        assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)
    assert {"recall@1", "map@r"} <= set(result.before) and {"recall@1", "map@r"} <= set(result.after)
    # The export keeps the recipe's preprocessing, so ingestion and serving see photos as training did.
    card = json.loads((out / "encoder" / "encoder_card.json").read_text())
    assert card["preprocessing"]["vignette"] == demo_train_settings(TINY).vignette > 0
    for report in ("embedding-report/report.md", "simulation/report.md"):
        assert (out / report).stat().st_size > 500
    text = "\n".join(lines)
    assert "shape (32,)" in text and "oracle" in text and "random" in text
    # Held-out people, untrained vs trained, each with an interval and the paired gain's interval.
    assert "held-out people (95% intervals" in text and "gain" in text
    lo, hi = result.held_out_intervals["trained"]["map@r diff"]
    gain = result.held_out_after["map@r"] - result.held_out_before["map@r"]
    assert lo <= gain <= hi


def test_demo_ends_with_the_commands_that_query_its_store_and_open_the_review_page(tmp_path: Path) -> None:
    from matcher.demo import next_steps

    out = tmp_path / "demo"
    text = "\n".join(next_steps(out, out / "data", "user_007"))
    assert f"MATCHER_STORE_PATH={out / 'qdrant'} matcher recommend user_007" in text
    assert f"MATCHER_STORE_PATH={out / 'qdrant'} matcher serve --photos {out / 'data'}" in text
    assert "http://127.0.0.1:8000/review?user=user_007" in text


def test_demo_prints_a_compact_simulation_table_and_points_to_the_full_one(tmp_path: Path) -> None:
    from evaluation.simulation.metrics import (
        METRICS,
        SimulationResult,
        StrategyResult,
        WorldResult,
    )
    from evaluation.simulation.tables import strategy_table
    from evaluation.stats import Estimate
    from matcher.demo import simulation_summary

    def est(v: float) -> Estimate:
        return Estimate(v, v - 0.01, v + 0.01)

    keys = METRICS  # every metric the tables read, so a new one cannot be left out here
    strategies = [
        StrategyResult(
            name,
            100,
            0,
            0,
            {k: est(base + i / 100) for i, k in enumerate(keys)},
            {"like_rate": est(1.5), "mutual_rate": est(lift)},
            {"mutual_rate": est(0.4)},
        )
        for name, base, lift in (("random", 0.2, 1.0), ("engine", 0.3, 2.25), ("market", 0.4, 3.5))
    ]
    world = WorldResult("similarity", strategies, {}, {}, {}, 0.0, {})
    sim = SimulationResult({}, [world], 0.165, report_path=tmp_path / "simulation" / "report.md")
    lines = "\n".join(simulation_summary(sim)).splitlines()
    assert max(len(line) for line in lines[:-1]) < 110  # the last line names the report's path
    assert max(len(line) for line in strategy_table(world).splitlines()) > 250  # the one that stays in the report
    rows = {line.split()[0]: line.split() for line in lines if line.strip().startswith(("random", "engine", "market"))}
    assert rows["engine"][-4:] == ["0.300", "0.310", "0.32", "2.25"]  # like, mutual, matches/user, mutual lift
    assert rows["market"][-1] == "3.50"
    assert str(tmp_path / "simulation" / "report.md") in lines[-1]
