"""Which metadata layout was chosen, and why, is said: a per-photo file whose path column is missing or
misnamed used to switch silently to the per-user layout and reject every row after a user's first as a
duplicate."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from engine.settings import Settings
from ingestion.metadata import load_metadata
from ingestion.report import Reason

S = Settings(progress=False)


def test_per_photo_file_without_image_path_says_the_layout_and_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("user_id,photo,gender,age\nu1,u1/a.jpg,f,30\nu1,u1/b.jpg,f,30\nu2,u2/a.jpg,m,31\n", "utf-8")
    with caplog.at_level(logging.WARNING, logger="ingestion.metadata"):
        meta = load_metadata(csv, tmp_path, S)
    assert meta.layout == "per_user"
    assert meta.layout_reason.startswith("per-user layout: the header has no image_path column")
    assert "(found: user_id, photo, gender, age)" in meta.layout_reason
    assert "if column 'photo' holds photo paths, rename it image_path" in meta.layout_reason
    dup = next(r for r in meta.rejected if r.kind == "row")
    assert (dup.reason, dup.row) == (Reason.DUPLICATE_ROW, 3)
    assert "user u1 repeats line 2: one row per user in the per-user layout (no image_path column)" in dup.detail
    warned = [r.getMessage() for r in caplog.records if "repeat a user_id" in r.getMessage()]
    assert len(warned) == 1 and "rename it image_path" in warned[0] and str(csv) in warned[0]


def test_per_photo_layout_reason_and_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("user_id,image_path,gender,age\nu1,a.jpg,f,30\nu1,b.jpg,f,30\n", "utf-8")
    with caplog.at_level(logging.WARNING, logger="ingestion.metadata"):
        meta = load_metadata(csv, tmp_path, S)
    assert meta.layout_reason == "per-photo layout: the header has an image_path column (one row per photo)"
    assert not caplog.records


def test_a_real_per_user_file_is_not_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv = tmp_path / "users.csv"
    csv.write_text("user_id,gender,age\nu1,f,30\nu2,m,31\n", "utf-8")
    with caplog.at_level(logging.WARNING, logger="ingestion.metadata"):
        meta = load_metadata(csv, tmp_path, S)
    assert meta.layout == "per_user" and "rename" not in meta.layout_reason
    assert not [r for r in caplog.records if "repeat a user_id" in r.getMessage()]


def test_ingest_summary_names_the_layout(tmp_path: Path, demo_dir: Path, tiny_encoder: object) -> None:
    from ingestion.job import run_ingest

    csv = tmp_path / "no_path.csv"
    csv.write_text("user_id,gender,age\nnobody_here,f,30\n", "utf-8")
    report = run_ingest(
        demo_dir, csv, settings=Settings(store_path=tmp_path / "q", progress=False), encoder=tiny_encoder
    )
    first = report.summary().splitlines()[0]
    assert first.startswith("metadata per-user layout: the header has no image_path column (found: user_id, gender")
    assert report.layout_reason is not None and report.layout == "per_user"
