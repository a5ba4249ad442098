"""Inputs a new user gets wrong, through the whole job: nothing is left out of the run report unsaid."""

from __future__ import annotations

from pathlib import Path

from ingestion.job import run_ingest
from ingestion.report import Reason


def test_stray_quote_report_counts_add_up_to_the_file(demo_copy: Path, tiny_encoder, ing_settings) -> None:
    meta = demo_copy / "metadata.csv"
    lines = meta.read_text(encoding="utf-8").splitlines()
    cells = lines[2].split(",")
    cells[1] = '"' + cells[1]  # a stray quote in image_path
    lines[2] = ",".join(cells)
    meta.write_text("\n".join([*lines, ""]) + "\n", encoding="utf-8")  # and a blank line at the end
    report = run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    c = report.counts
    assert [(r.row, r.reason) for r in report.rejected] == [(3, Reason.STRAY_QUOTE)]
    assert c.metadata_lines == len(lines) + 1
    assert 1 + c.rows_accepted + c.rows_rejected + c.metadata_blank_lines == c.metadata_lines
    assert (c.rows_rejected, c.metadata_blank_lines, c.photos_seen) == (1, 1, len(lines) - 2)
    assert f"metadata: {len(lines) + 1} lines = 1 header + {len(lines) - 2} rows accepted + 1 rejected + 1 blank" in (
        report.summary()
    )
