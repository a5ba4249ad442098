"""An embedded store folder opened with the other embedded backend is refused, never read as empty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.errors import InvalidInput
from engine.schema import PHOTOS, photo_point_id
from engine.settings import Settings
from engine.store import folder_kind, open_store
from engine.store.base import Point


def _listing(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*"))


def _make(backend: str, path: Path) -> Settings:
    s = Settings(store_path=path, store_backend=backend, progress=False)
    with open_store(s) as store:
        store.setup("enc", 4)
        store.upsert(PHOTOS, [Point(photo_point_id("u1", "ab"), np.ones(4, np.float32), {"user_id": "u1"})])
    return s


@pytest.mark.parametrize(("made", "other"), [("edge", "local"), ("local", "edge")])
def test_the_other_backend_is_refused_and_nothing_is_written(tmp_path: Path, made: str, other: str) -> None:
    path = tmp_path / "store"
    s = _make(made, path)
    assert folder_kind(path) == made
    before = _listing(path)
    with pytest.raises(InvalidInput) as info:
        open_store(s.model_copy(update={"store_backend": other}))
    assert f"--backend {made}" in str(info.value) and str(path) in str(info.value)
    assert _listing(path) == before
    with open_store(s) as store:  # still the one store, as it was
        assert store.count(PHOTOS) == 1


def test_cli_stats_with_the_wrong_backend_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    from matcher.cli import main

    path = tmp_path / "store"
    _make("edge", path)
    code = main(["--store", str(path), "--backend", "local", "stats"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"matcher stats: error: the store folder {path} holds an Edge store")
    assert len(err.splitlines()) == 1


def test_empty_or_missing_folder_has_no_kind(tmp_path: Path) -> None:
    assert folder_kind(tmp_path / "nope") is None
    assert folder_kind(tmp_path) is None
