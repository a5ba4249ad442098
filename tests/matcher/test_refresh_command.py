"""``matcher refresh``: the full reciprocity pass as a batch command, on a real embedded store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.reciprocity.blocks import stored
from engine.schema import KTH_SIM, KTH_TOP, user_point_id, window_of
from engine.settings import Settings
from engine.store import open_store
from matcher.cli import main
from tests.matcher.store_fill import add_random_users


def test_refresh_command_computes_then_finds_nothing_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(store_path=tmp_path / "q", progress=False)  # type: ignore[call-arg]
    rng = np.random.default_rng(0)
    add_random_users(settings, 60, rng)
    flags = ["--store", str(settings.store_path), "--no-progress"]
    assert main([*flags, "refresh"]) == 0
    assert "refresh: 60 users, 60 rewritten, 0 skipped" in capsys.readouterr().out
    with open_store(settings) as store:
        blocks = stored(store)  # the statistics' blocks (engine.reciprocity.blocks), not the payload
        assert blocks is not None
        st = blocks.payload_of(user_point_id("u0"))
        window = window_of(st[KTH_TOP])
        assert window is not None and len(window) == 30  # fewer compatible users than K=50: all of them, best first
        assert st[KTH_SIM] == -1.0 and window == sorted(window, reverse=True)
    assert main([*flags, "refresh"]) == 0
    assert "refresh: 60 users, 0 rewritten" in capsys.readouterr().out
