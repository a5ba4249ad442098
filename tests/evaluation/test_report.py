"""Embedding-quality report: the command's files, its table, and metrics that match an independent recount."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from matcher.cli import main
from training.metrics import retrieval_metrics

FLAGS = ["--device", "cpu", "--dtype", "float32"]


@pytest.fixture(scope="module")
def exports(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two encoders over the tiny tower, saved as exports: A with a 32-d head, B with a 16-d head."""
    from training.encoder import load_encoder, save_encoder

    root = tmp_path_factory.mktemp("exports")
    out = []
    for name, dim in (("enc-a", 32), ("enc-b", 16)):
        enc = load_encoder(tiny_checkpoint, device="cpu", dtype="float32", pixel_budget=64 * 64, dim=dim)
        out.append(save_encoder(enc, root / name, {"note": "test"}))
    return out[0], out[1]


@pytest.fixture(scope="module")
def compare_run(
    demo_dir: Path, exports: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("report")
    a, b = exports
    argv = ["--no-progress", "evaluate-embeddings", str(demo_dir), "--encoder", str(a), "--compare", str(b)]
    rc = main([*argv, "--out", str(out), *FLAGS])
    assert rc == 0
    return out


def _png_ok(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 300 and im.height >= 200
        px = np.asarray(im.convert("L"), dtype=np.float32)
    assert px.std() > 10  # something is drawn, not a blank canvas


def test_compare_writes_report_metrics_and_figures(compare_run: Path) -> None:
    report = (compare_run / "report.md").read_text(encoding="utf-8")
    payload = json.loads((compare_run / "metrics.json").read_text(encoding="utf-8"))
    assert [e["label"] for e in payload["encoders"]] == ["enc-a", "enc-b"]
    assert [e["dim"] for e in payload["encoders"]] == [32, 16]
    # 24 people are too few for the attribute probes to mean anything: none is claimed.
    assert all(e["probes"] == {} for e in payload["encoders"])
    assert "| attractiveness probe" not in report and "| gender probe" not in report
    figures = payload["figures"]
    assert set(figures) == {"distances", "map_enc-a", "map_enc-b", "neighbours_enc-a", "neighbours_enc-b"}
    for name in figures.values():
        _png_ok(compare_run / name)
        assert f"]({name})" in report  # embedded in the report
    # One table with both encoders side by side and their difference.
    assert "| metric | A: enc-a | B: enc-b | B - A |" in report
    for e in payload["encoders"]:
        assert e["encoder_id"] in report
    ci = r" \[([+-]?[0-9.]+), ([+-]?[0-9.]+)\]"  # each value carries its 95% interval (bootstrap by person)
    row = re.search(rf"^\| MAP@R \| ([0-9.]+){ci} \| ([0-9.]+){ci} \| ([+-][0-9.]+){ci} \|$", report, re.M)
    assert row is not None
    a, b = (e["metrics"]["map@r"] for e in payload["encoders"])
    assert float(row[1]) == pytest.approx(a, abs=5e-4) and float(row[4]) == pytest.approx(b, abs=5e-4)
    assert float(row[7]) == pytest.approx(b - a, abs=1e-3)
    for value, lo, hi in ((row[1], row[2], row[3]), (row[4], row[5], row[6]), (row[7], row[8], row[9])):
        assert float(lo) - 1e-3 <= float(value) <= float(hi) + 1e-3
    lo, hi = payload["encoders"][1]["intervals_95"]["map@r diff"]
    assert lo <= b - a <= hi


def test_metrics_json_equals_an_independent_recount(
    compare_run: Path, demo_dir: Path, exports: tuple[Path, Path]
) -> None:
    """Embed the photos here (own CSV reading, own image loading) and recompute the metrics."""
    from training.encoder import load_encoder

    with (demo_dir / "metadata.csv").open(newline="", encoding="utf-8") as f:
        rows = sorted((r["user_id"], str(demo_dir / r["image_path"])) for r in csv.DictReader(f))
    images = []
    for _, p in rows:
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    labels = [u for u, _ in rows]
    payload = json.loads((compare_run / "metrics.json").read_text(encoding="utf-8"))
    assert payload["data"]["n_photos"] == len(rows)
    assert payload["data"]["n_identities"] == len(set(labels))
    assert payload["data"]["layout"] == "metadata.csv"
    genders = payload["data"]["genders"]
    assert sum(genders.values()) == len(rows) and set(genders) <= {"female", "male", "nonbinary"}
    for export, entry in zip(exports, payload["encoders"], strict=True):
        enc = load_encoder(export, device="cpu", dtype="float32")
        assert enc.encoder_id == entry["encoder_id"]
        emb = enc.embed(images, batch_size=8)
        expected = retrieval_metrics(emb, labels)
        got: dict[str, Any] = entry["metrics"]
        for key in ("recall@1", "recall@5", "recall@10", "map@r", "n_queries", "n_photos", "n_identities"):
            assert got[key] == pytest.approx(expected[key], abs=1e-6), key
        for key in ("mean_same_dist", "mean_diff_dist"):
            assert got[key] == pytest.approx(expected[key], abs=1e-5), key


def test_single_encoder_on_the_raw_profiles_layout(
    demo_dir: Path, exports: tuple[Path, Path], tmp_path: Path
) -> None:
    """DATA_DIR with only raw/profiles/<user>_<n>.jpg and raw/users.csv (genders read from users.csv)."""
    from evaluation.report import evaluate_embeddings
    from training.encoder import load_encoder

    data = tmp_path / "plan"
    (data / "raw").mkdir(parents=True)
    (data / "raw" / "profiles").symlink_to(demo_dir / "raw" / "profiles", target_is_directory=True)
    (data / "raw" / "users.csv").write_bytes((demo_dir / "raw" / "users.csv").read_bytes())
    enc = load_encoder(exports[0], device="cpu", dtype="float32")
    report, results = evaluate_embeddings(data, [enc], tmp_path / "out")
    payload = json.loads(report.metrics_json.read_text(encoding="utf-8"))
    n_meta = sum(1 for _ in (demo_dir / "metadata.csv").open(encoding="utf-8")) - 1
    assert payload["data"]["layout"] == "raw/profiles/<user>_<n>.jpg"
    assert payload["data"]["n_photos"] == n_meta and payload["data"]["n_identities"] == 24
    assert payload["data"]["genders"] is not None and "unknown" not in payload["data"]["genders"]
    assert len(payload["encoders"]) == 1 and "B - A" not in report.report_md.read_text(encoding="utf-8")
    for p in report.figures.values():
        _png_ok(p)
    assert results[0].embeddings.shape == (n_meta, 32)


def test_mapping_csv_without_genders(demo_dir: Path, exports: tuple[Path, Path], tmp_path: Path) -> None:
    from evaluation.report import evaluate_embeddings
    from training.encoder import load_encoder

    with (demo_dir / "metadata.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:20]
    data = tmp_path / "mapped"
    data.mkdir()
    with (data / "pairs.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "identity"])
        w.writerows([[str((demo_dir / r["image_path"]).resolve()), r["user_id"]] for r in rows])
    enc = load_encoder(exports[1], device="cpu", dtype="float32")
    report, results = evaluate_embeddings(data, [enc], tmp_path / "out")
    payload = json.loads(report.metrics_json.read_text(encoding="utf-8"))
    assert payload["data"]["layout"] == "mapping CSV pairs.csv"
    assert payload["data"]["n_photos"] == 20 and payload["data"]["genders"] is None
    assert "coloured by gender" not in report.report_md.read_text(encoding="utf-8")
    _png_ok(report.figures["map_enc-b"])


def test_table_marks_undefined_metrics(demo_dir: Path) -> None:
    from evaluation.embeddings import EncoderResult
    from evaluation.report import metrics_table

    emb = np.eye(3, dtype=np.float32)
    m = retrieval_metrics(emb, ["a", "b", "c"])  # nobody has two photos: retrieval metrics are NaN
    r = EncoderResult("x", "src", "id0", 3, emb, m, 0.1)
    table = metrics_table([r])
    assert "| recall@1 | n/a |" in table and "| MAP@R | n/a |" in table
    assert math.isnan(m["map@r"])


def test_missing_data_dir_is_a_clean_error(
    exports: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["evaluate-embeddings", str(tmp_path / "nope"), "--encoder", str(exports[0]),
               "--out", str(tmp_path / "o"), *FLAGS])  # fmt: skip
    assert rc == 2
    assert "nope" in capsys.readouterr().err


def test_probes_find_planted_signal_and_not_noise() -> None:
    """Attractiveness and gender planted linearly in synthetic vectors are found; pure noise scores near chance."""
    from evaluation.embeddings import attribute_probes

    rng = np.random.default_rng(0)
    people = [f"u{i:02d}" for i in range(60)]
    attr = {p: float(rng.random()) for p in people}
    sex = {p: ("female" if i % 2 else "male") for i, p in enumerate(people)}
    ids = [p for p in people for _ in range(3)]
    genders: list[str | None] = [sex[p] for p in ids]
    noise = rng.standard_normal((len(ids), 16))
    signal = noise * 0.3
    signal[:, 0] += [4 * attr[p] for p in ids]
    signal[:, 1] += [2.0 if sex[p] == "female" else -2.0 for p in ids]
    found = attribute_probes(signal, ids, genders, attr)
    blind = attribute_probes(noise, ids, genders, attr)
    assert found["attractiveness_spearman"] > 0.8
    assert found["gender_accuracy"] > 0.9 and found["gender_majority"] == pytest.approx(0.5)
    assert abs(blind["attractiveness_spearman"]) < 0.4
    assert blind["gender_accuracy"] < 0.7
    # Too few people (below min_people): nothing claimed.
    assert attribute_probes(signal[:90], ids[:90], genders[:90], attr) == {}


def test_warns_when_the_encoder_was_trained_on_the_data(
    demo_dir: Path, exports: tuple[Path, Path], tmp_path: Path
) -> None:
    import shutil

    from evaluation.embeddings import training_overlap
    from evaluation.report import evaluate_embeddings
    from training.encoder import load_encoder

    trained = tmp_path / "trained"
    shutil.copytree(exports[0], trained)
    card = json.loads((trained / "encoder_card.json").read_text(encoding="utf-8"))
    card["data"] = {"sources": [str(demo_dir)], "val_sources": []}
    (trained / "encoder_card.json").write_text(json.dumps(card), encoding="utf-8")
    assert training_overlap(trained, demo_dir) == [str(demo_dir)]
    assert training_overlap(exports[0], demo_dir) == []  # its card names no training data
    assert training_overlap(trained, tmp_path / "elsewhere") == []

    enc = load_encoder(trained, device="cpu", dtype="float32")
    report, _ = evaluate_embeddings(demo_dir, [enc], tmp_path / "out")
    text = report.report_md.read_text(encoding="utf-8")
    assert "**Warning:** A: trained was trained on this data" in text
    assert json.loads(report.metrics_json.read_text(encoding="utf-8"))["encoders"][0]["trained_on_this_data"]
