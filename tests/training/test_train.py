from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import InvalidInput
from training.data import read_dataset, split_by_identity
from training.loop import Interrupted, TrainSettings, build_model, train

# Small and fast: 64x64 pixels (4 merged tokens per photo), 16-d output.
FAST = {"pixel_budget": 64 * 64, "dim": 16, "p": 6, "k": 2, "cache_views": 2, "val_identities": 6,
        "eval_batch_size": 64}


def _settings(**kw: object) -> TrainSettings:
    return TrainSettings.model_validate({**FAST, **kw})


def _generated_folder(out: Path, identities: range, photos: int = 3, seed: int = 0) -> Path:
    """A generated-images folder in the data plan's layout (images + ``identities.csv`` of image_path,identity).

    Each identity is a two-colour badge (its own pair of saturated hues); each photo puts it at a random place
    and size on a random grey background with noise. Identity lives in the hues, nuisance in the background
    brightness and the layout, which mean-pooled random tower features mix; training must learn to look past
    the nuisance, and that has to transfer to identities it never saw.
    """
    import colorsys
    import csv

    from PIL import Image, ImageDraw

    (out / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in identities:
        hues = np.random.default_rng([seed, i]).random(2)
        c1, c2 = (tuple(int(255 * v) for v in colorsys.hsv_to_rgb(h, 0.9, 0.9)) for h in hues)
        for n in range(photos):
            rng = np.random.default_rng([seed, i, n, 1])
            grey = int(rng.uniform(20, 235))
            img = Image.new("RGB", (96, 96), (grey, grey, grey))
            draw = ImageDraw.Draw(img)
            side = int(rng.uniform(34, 50))
            x, y = (int(v) for v in rng.integers(0, 96 - side, 2))
            draw.rectangle([x, y, x + side, y + side // 2], fill=c1)
            draw.rectangle([x, y + side // 2, x + side, y + side], fill=c2)
            noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 8, (96, 96, 3))
            rel = f"img/{i:04d}_{n}.png"
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out / rel)
            rows.append((rel, f"gen{i:04d}"))
    with (out / "identities.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_path", "identity"])
        writer.writerows(rows)
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Disjoint identities: 90 to train on, 30 to validate (pick the best epoch), 30 to test on."""
    root = tmp_path_factory.mktemp("generated")
    return {
        "train": _generated_folder(root / "train", range(0, 90)),
        "val": _generated_folder(root / "val", range(90, 120)),
        "test": _generated_folder(root / "test", range(120, 150)),
    }


def test_training_beats_the_untrained_encoder_on_unseen_identities(
    generated: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from training.data import load_image
    from training.encoder import load_encoder
    from training.metrics import retrieval_metrics

    settings = _settings(epochs=30, patience=30, p=8, k=3, lr=1e-2, cache_views=2)
    out = tmp_path / "run"
    result = train([generated["train"]], out, base=str(tiny_checkpoint), settings=settings,
                   val_data=[generated["val"]], progress=False)
    # On the validation identities (which chose the epoch) ...
    assert result.best_epoch > 0
    assert result.best_metrics["recall@1"] > result.untrained_metrics["recall@1"]
    assert result.best_metrics["map@r"] > result.untrained_metrics["map@r"]
    # ... and, free of that selection, on identities no step of the run saw.
    test = read_dataset(generated["test"])
    images, labels = [load_image(p.path) for p in test], [p.identity for p in test]
    before = load_encoder(tiny_checkpoint, device="cpu", dtype="float32", pixel_budget=64 * 64, dim=16)
    after = load_encoder(out, device="cpu")
    m0 = retrieval_metrics(before.embed(images, batch_size=64), labels, ks=(1, 5))
    m1 = retrieval_metrics(after.embed(images, batch_size=64), labels, ks=(1, 5))
    assert m1["recall@1"] > m0["recall@1"]
    assert m1["map@r"] > m0["map@r"]
    assert m1["mean_diff_dist"] - m1["mean_same_dist"] > m0["mean_diff_dist"] - m0["mean_same_dist"]


def test_full_tower_training_beats_the_untrained_encoder_on_demo_data(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """On demo data a random tiny tower has no useful features, so the head alone learns nothing there
    (measured: held-out recall@1 stays at chance); the whole tower has to train, which takes about two
    minutes. Kept in the default run: it is the evidence that training works on the product's own data."""
    from evaluation.demo_data import make_demo_data

    demo = make_demo_data(tmp_path_factory.mktemp("demo200"), users=200, seed=7)
    settings = TrainSettings(mode="full", pixel_budget=128 * 128, dim=32, p=16, k=4, lr=3e-3, tower_lr=3e-3,
                             epochs=8, patience=8, val_fraction=0.3, eval_batch_size=64)
    result = train([demo], tmp_path_factory.mktemp("run"), base=str(tiny_checkpoint), settings=settings,
                   progress=False)
    assert result.best_epoch > 0
    assert result.best_metrics["recall@1"] > result.untrained_metrics["recall@1"]
    assert result.best_metrics["map@r"] > result.untrained_metrics["map@r"]


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_head_mode_exports_a_directory_that_load_encoder_reads(
    demo_dir: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from training.encoder import load_encoder
    from training.metrics import retrieval_metrics

    out = tmp_path / "run"
    result = train([demo_dir], out, base=str(tiny_checkpoint), settings=_settings(epochs=2), progress=False)
    log = _log(out)
    assert [e["epoch"] for e in log] == [0, 1, 2]
    assert {"recall@1", "recall@5", "map@r", "mean_same_dist", "mean_diff_dist"} <= set(log[1]["val"])
    card = json.loads((out / "encoder_card.json").read_text())
    assert card["encoder_id"] == result.encoder_id
    assert card["data"]["val"]["identities"] == 6
    assert card["train_settings"]["mode"] == "head"
    assert card["validation"]["best_epoch"] == result.best_epoch
    # The card carries every epoch's validation metrics, and its markdown twin says the same.
    assert [e["epoch"] for e in card["epochs"]] == [0, 1, 2]
    assert card["epochs"][1]["val"]["map@r"] == pytest.approx(log[1]["val"]["map@r"])
    assert [e["best"] for e in card["epochs"]][result.best_epoch] is True
    md = (out / "model_card.md").read_text()
    assert result.encoder_id in md and f"best (epoch {result.best_epoch})" in md
    assert md.count("\n| 2 | ") == 1 and f"{log[2]['val']['map@r']:.3f}" in md
    # The export embeds held-out photos exactly as validation did: same metrics through load_encoder.
    encoder = load_encoder(out, device="cpu")
    assert encoder.encoder_id == result.encoder_id and encoder.dim == 16 and encoder.pixel_budget == 64 * 64
    _, val = split_by_identity(read_dataset(demo_dir), val_identities=6, seed=0)
    from training.data import load_image

    emb = encoder.embed([load_image(p.path) for p in val])
    assert emb.shape == (len(val), 16) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    again = retrieval_metrics(emb, [p.identity for p in val], ks=(1, 5))
    assert again["map@r"] == pytest.approx(result.best_metrics["map@r"], abs=1e-6)
    assert again["recall@1"] == pytest.approx(result.best_metrics["recall@1"], abs=1e-6)

    # And it ingests as is: `matcher ingest --encoder DIR` stores every photo under the trained encoder's id.
    from matcher.cli import main

    report_path = tmp_path / "ingest.json"
    code = main(["--no-progress", "--store", str(tmp_path / "store"), "ingest", str(demo_dir), "--metadata",
                 str(demo_dir / "metadata.csv"), "--encoder", str(out), "--report", str(report_path)])
    assert code == 0
    report = json.loads(report_path.read_text())
    n_rows = len((demo_dir / "metadata.csv").read_text().strip().splitlines()) - 1
    assert report["counts"]["photos_stored"] == n_rows
    assert report["encoder_id"] == result.encoder_id and report["dim"] == 16


def test_resume_continues_from_the_saved_step(demo_dir: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    settings = _settings(epochs=3)
    whole = train([demo_dir], tmp_path / "whole", base=str(tiny_checkpoint), settings=settings, progress=False)
    steps_per_epoch = whole.steps // 3
    assert steps_per_epoch >= 2
    cut = steps_per_epoch + 1  # mid-way through epoch 2
    part = tmp_path / "part"
    with pytest.raises(Interrupted):
        train([demo_dir], part, base=str(tiny_checkpoint), settings=settings, progress=False,
              stop_after_steps=cut)
    saved = torch.load(part / "checkpoints" / "last.pt", weights_only=False)
    assert saved["state"]["step"] == cut
    assert (saved["state"]["epoch"], saved["state"]["batch"]) == (1, 1)
    resumed = train([demo_dir], part, base=str(tiny_checkpoint), settings=settings, progress=False)
    assert resumed.steps == whole.steps
    assert resumed.encoder_id == whole.encoder_id  # same weights, bit for bit
    drop = ("seconds",)
    strip = [{k: v for k, v in e.items() if k not in drop} for e in _log(part)]
    assert strip == [{k: v for k, v in e.items() if k not in drop} for e in _log(tmp_path / "whole")]


def test_gradient_accumulation_steps_once_per_n_batches(
    demo_dir: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    import math

    train_ids = len({p.identity for p in read_dataset(demo_dir)}) - FAST["val_identities"]
    batches = train_ids // FAST["p"]
    result = train([demo_dir], tmp_path / "run", base=str(tiny_checkpoint),
                   settings=_settings(epochs=2, grad_accum=2), progress=False)
    assert batches >= 3 and result.steps == 2 * math.ceil(batches / 2)


def test_resume_refuses_other_settings(demo_dir: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        train([demo_dir], out, base=str(tiny_checkpoint), settings=_settings(epochs=2), progress=False,
              stop_after_steps=1)
    with pytest.raises(InvalidInput, match="settings.lr"):
        train([demo_dir], out, base=str(tiny_checkpoint), settings=_settings(epochs=2, lr=0.5), progress=False)


def test_validation_data_sharing_a_person_with_training_is_refused(
    demo_dir: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput, match="both training and validation"):
        train([demo_dir], tmp_path / "run", base=str(tiny_checkpoint), settings=_settings(),
              val_data=[demo_dir / "raw" / "profiles"], progress=False)


@pytest.mark.parametrize("mode", ["last_blocks", "lora", "full"])
def test_tower_modes_train_only_their_parameters(
    mode: str, demo_dir: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from training.encoder import load_encoder

    settings = _settings(mode=mode, epochs=1, unfreeze_blocks=1, tower_lr=1e-2, lora_rank=4)
    encoder, groups = build_model(str(tiny_checkpoint), settings)
    names = {n for n, p in encoder.tower.named_parameters() if p.requires_grad}
    if mode == "last_blocks":
        assert names and all(n.startswith(("blocks.1.", "merger.")) for n in names)
    elif mode == "lora":
        assert names and all("lora_" in n for n in names)
        # Only the blocks' linears get adapters, never the merger's linear_fc1/2.
        assert not any("merger" in n for n in names)
        assert any(".mlp.linear_fc1.lora_A" in n for n in names) and any(".attn.qkv.lora_B" in n for n in names)
    else:
        assert any(n.startswith("blocks.0.") for n in names) and "patch_embed.proj.weight" in names
    assert len(groups) == 2

    before = load_encoder(tiny_checkpoint, device="cpu", dtype="float32")
    out = tmp_path / mode
    result = train([demo_dir], out, base=str(tiny_checkpoint), settings=settings, progress=False)
    card = json.loads((out / "encoder_card.json").read_text())
    assert card["tower"] == ("lora" if mode == "lora" else "full")
    after = load_encoder(out, device="cpu")
    assert after.encoder_id == result.encoder_id
    old = dict(before.tower.named_parameters())
    # What the last epoch trained (the resume point holds exactly the trainable tower weights).
    trained = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["model"]["tower"]
    assert set(trained) == names
    if mode == "lora":
        assert any(float(v.abs().sum()) > 0 for n, v in trained.items() if "lora_B" in n)  # B starts at 0
    else:
        moved = {n for n, v in trained.items() if not torch.equal(v, old[n])}
        assert moved and moved <= names
    # The export holds the best epoch: the base tower when no epoch beat it, else the trained one.
    changed = {n for n, p in after.tower.named_parameters() if not torch.equal(p, old[n])}
    if result.best_epoch == 0:
        assert not changed
    elif mode == "last_blocks":
        assert changed and all(n.startswith(("blocks.1.", "merger.")) for n in changed)
    elif mode == "lora":
        # Merged adapters change the targeted block linears and nothing else.
        assert changed and all(".attn." in n or ".mlp." in n for n in changed)
    else:
        assert "patch_embed.proj.weight" in changed


def test_cli_train_with_tiny_base(demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from matcher.cli import main

    out = tmp_path / "cli"
    code = main(["--no-progress", "train", str(demo_dir), "--out", str(out), "--base", "tiny", "--epochs", "1",
                 "--pixel-budget", "4096", "--dim", "16", "--p", "6", "--k", "2", "--cache-views", "1",
                 "--val-identities", "6", "--loss", "supcon,triplet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "exported to" in printed and "map@r" in printed
    assert (out / "base" / "config.json").is_file()
    card = json.loads((out / "encoder_card.json").read_text())
    assert card["train_settings"]["losses"] == ["supcon", "triplet"]
    assert set(_log(out)[1]["loss_parts"]) == {"supcon", "triplet"}


def test_cli_rejects_bad_settings(demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from matcher.cli import main

    code = main(["train", str(demo_dir), "--out", str(tmp_path / "x"), "--base", "tiny", "--loss", "arcface"])
    assert code == 2
    assert "losses" in capsys.readouterr().err


def test_cached_views_of_a_repeated_photo_differ() -> None:
    from training.batches import feature_batches
    from training.samplers import PKBatchSampler

    labels = np.array([0, 1, 1, 2, 2, 3])  # identities 0 and 3 have one photo each
    feats = torch.arange(6 * 3, dtype=torch.float32).reshape(6, 3, 1)  # photo i, view v -> 3 i + v
    (batch,) = list(feature_batches(PKBatchSampler(labels, 4, 3, seed=0), 0, 0, feats, labels, seed=0))
    x, y = batch
    assert x.shape == (12, 1) and sorted(set(y.tolist())) == [0, 1, 2, 3]
    values = x.flatten().tolist()
    assert len(values) == len(set(values))  # no (photo, view) pair twice, singletons included
    assert all(int(v) // 3 in np.flatnonzero(labels == int(lab)) for v, lab in zip(values, y, strict=True))
