"""``matcher rebuild-model``: the learned model's full rebuild as a batch command, on a real embedded store."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from engine.learned.rebuild import load_model_global
from engine.learned.served import served_model
from engine.schema import user_point_id
from engine.settings import Settings
from engine.store import open_store
from matcher.cli import main
from tests.matcher.store_fill import add_random_users


def test_rebuild_model_fits_the_feedback_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(store_path=tmp_path / "q", progress=False)  # type: ignore[call-arg]
    rng = np.random.default_rng(0)
    add_random_users(settings, 40, rng)
    log = tmp_path / "log.csv"
    with log.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["viewer_id", "candidate_id", "decision", "ts"])
        for a in range(40):
            for b in range(1 - a % 2, 40, 2):  # the other gender
                w.writerow([f"u{a}", f"u{b}", "like" if b < 6 or rng.random() < 0.3 else "pass", 1])
    flags = ["--store", str(settings.store_path), "--no-progress"]
    assert main([*flags, "feedback", str(log)]) == 0
    capsys.readouterr()
    assert main([*flags, "rebuild-model"]) == 0
    out = capsys.readouterr().out
    assert "rebuild-model: 40 users, 800 likes and passes" in out and "appeal +" in out  # liked users learned
    with open_store(settings) as store:
        assert load_model_global(store) is not None
        served = served_model(store)
        assert served is not None
        side = served.side(served.rows([user_point_id("u0")]))
        assert side["n"][0].tolist() == [20, 20, 20]  # u0 liked by all 20 viewers of the other gender


def test_batch_commands_optimize_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``feedback`` and ``rebuild-model`` end with ``store.optimize()``, which seals the feedback log's appendable
    segment (engine/store/meta.py, AUX_SEGMENT_KB): a live app that never ran it would keep every decision in it."""
    from engine.store.edge import EdgeStore

    calls: list[str] = []
    real = EdgeStore.optimize

    def spy(self: EdgeStore) -> None:
        calls.append("optimize")
        real(self)

    monkeypatch.setattr(EdgeStore, "optimize", spy)
    settings = Settings(store_path=tmp_path / "q", progress=False)  # type: ignore[call-arg]
    add_random_users(settings, 6, np.random.default_rng(1))
    calls.clear()  # whatever the fill did
    log = tmp_path / "log.csv"
    log.write_text("viewer_id,candidate_id,decision,ts\nu0,u1,like,1\nu1,u0,pass,2\nu2,u3,like,3\n")
    flags = ["--store", str(settings.store_path), "--no-progress"]
    assert main([*flags, "feedback", str(log)]) == 0
    assert calls == ["optimize"] and "store optimized in" in capsys.readouterr().out
    assert main([*flags, "rebuild-model"]) == 0
    assert calls == ["optimize"] * 2 and ", optimize " in capsys.readouterr().out
