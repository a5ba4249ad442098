"""The embedding report says when its two encoders are one model (an export that kept the untrained weights),
and a map's identity colours do not repeat every 20 people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evaluation.embeddings import EncoderResult, same_model_notes
from evaluation.plots import identity_colours
from evaluation.report import evaluate_embeddings


def result(label: str, source: Path | str, emb: np.ndarray) -> EncoderResult:
    return EncoderResult(label, str(source), f"id-{label}", emb.shape[1], emb, {}, 0.0)


def vectors(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((12, 8)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_an_export_that_kept_its_untrained_weights_is_named(tmp_path: Path) -> None:
    export = tmp_path / "trained"
    export.mkdir()
    (export / "encoder_card.json").write_text(json.dumps({"validation": {"best_epoch": 0, "map@r": 0.1}}))
    v = vectors(0)
    notes = same_model_notes([result("untrained", tmp_path / "base", v), result("trained", export, v.copy())])
    assert len(notes) == 1
    assert notes[0].startswith("A: untrained and B: trained give the same vector for every photo")
    assert "B: trained is a training export whose card says best epoch 0" in notes[0]
    assert "the export kept the untrained weights" in notes[0]


def test_two_same_models_without_a_card_still_get_the_note(tmp_path: Path) -> None:
    v = vectors(1)
    notes = same_model_notes([result("a", tmp_path / "x", v), result("b", tmp_path / "y", v + 1e-7)])
    assert len(notes) == 1 and "If one of them is a training export, the export kept the untrained" in notes[0]


def test_different_models_get_no_note(tmp_path: Path) -> None:
    export = tmp_path / "trained"
    export.mkdir()
    (export / "encoder_card.json").write_text(json.dumps({"validation": {"best_epoch": 3}}))
    assert same_model_notes([result("a", tmp_path, vectors(0)), result("b", export, vectors(2))]) == []
    assert same_model_notes([result("a", tmp_path, vectors(0)), result("b", export, vectors(0)[:, :4])]) == []


def test_the_report_says_the_models_are_one(
    demo_dir: Path, tiny_encoder: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    report, _ = evaluate_embeddings(demo_dir, [tiny_encoder, tiny_encoder], tmp_path / "report", max_map_points=60)
    text = report.report_md.read_text(encoding="utf-8")
    assert "give the same vector for every photo" in text and "kept the untrained weights" in text
    assert sum("give the same vector" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("n", [11, 21, 45, 300])
def test_identity_colours_are_all_distinct(n: int) -> None:
    colours = identity_colours(n)
    assert len(colours) == n
    assert len({tuple(round(c, 4) for c in rgb) for rgb in colours}) == n
    assert all(0.0 <= c <= 1.0 for rgb in colours for c in rgb)
    if n > 20:
        assert all(colours[i] != colours[i + 20] for i in range(n - 20))  # tab20 repeated exactly here


def test_few_identities_keep_the_default_cycle() -> None:
    from matplotlib import colors as mcolors

    assert identity_colours(3) == [mcolors.to_rgb(c) for c in ("C0", "C1", "C2")]
