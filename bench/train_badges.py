"""Sanity check of the training path on an easy task: the test suite's badge images (identity = two hues).

Trains the full tiny tower (the demo's learning rate) on 90 badge identities, validates on 30, and scores
30 identities no step saw, untrained vs trained. Prints one JSON line per recipe.

    .venv/bin/python bench/train_badges.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(2)
sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "tests" / "training"),
]
from test_train import _generated_folder  # noqa: E402 (after the sys.path line)

from training.data import load_image, read_dataset  # noqa: E402 (after the sys.path line)
from training.encoder import load_encoder  # noqa: E402 (after the sys.path line)
from training.loop import train  # noqa: E402 (after the sys.path line)
from training.metrics import retrieval_metrics  # noqa: E402 (after the sys.path line)
from training.settings import TrainSettings  # noqa: E402 (after the sys.path line)
from training.tiny import build_tiny_checkpoint  # noqa: E402 (after the sys.path line)

root = Path("/tmp/badges")
if not (root / "test" / "identities.csv").exists():
    _generated_folder(root / "train", range(0, 90))
    _generated_folder(root / "val", range(90, 120))
    _generated_folder(root / "test", range(120, 150))
ck = build_tiny_checkpoint("/tmp/badge-tiny", seed=0)
test = read_dataset(root / "test")
imgs = [load_image(p.path) for p in test]
lab = [p.identity for p in test]
for mode, lr, tlr in (("full", 3e-3, 3e-3), ("full", 1e-3, 3e-4)):
    s = TrainSettings(
        mode=mode,
        pixel_budget=64 * 64,
        dim=16,
        p=8,
        k=3,
        lr=lr,
        tower_lr=tlr,
        epochs=12,
        patience=12,
        eval_batch_size=64,
    )
    c0 = time.process_time()
    r = train(
        [root / "train"],
        Path(f"/tmp/badge-run-{mode}-{lr}"),
        base=str(ck),
        settings=s,
        val_data=[root / "val"],
        progress=False,
        resume=False,
    )
    before = load_encoder(ck, pixel_budget=64 * 64, dim=16)
    after = load_encoder(f"/tmp/badge-run-{mode}-{lr}")
    m0 = retrieval_metrics(before.embed(imgs, batch_size=64), lab)
    m1 = retrieval_metrics(after.embed(imgs, batch_size=64), lab)
    print(
        json.dumps(
            {
                "mode": mode,
                "lr": lr,
                "tower_lr": tlr,
                "cpu_s": round(time.process_time() - c0, 1),
                "best_epoch": r.best_epoch,
                "test_before": [round(m0["recall@1"], 3), round(m0["map@r"], 3)],
                "test_after": [
                    round(m1["recall@1"], 3),
                    round(m1["map@r"], 3),
                    round(m1["mean_same_dist"], 3),
                    round(m1["mean_diff_dist"], 3),
                ],
            }
        ),
        flush=True,
    )
