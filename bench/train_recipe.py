"""The demo's training step, measured: train on one demo population, score on people it never saw.

For each seed: demo data of ``--users`` users with that seed (training, split by identity into train and
validation exactly as ``matcher demo`` does), a held-out population with seed + 1 (as the demo's report
uses), the tiny Qwen3-VL checkpoint of that seed (``--tiny`` overrides its vision config), then ``train()``
with the demo's settings plus ``--set`` overrides. Prints one JSON line per seed (untrained and trained
held-out recall@1 / MAP@R / distances, train seconds, process CPU seconds) and a summary table. The tiny
tower is the demo's (``training.tiny.DEMO_TINY_VISION``) unless ``--tiny`` overrides it.

    .venv/bin/python bench/train_recipe.py --seeds 0 1 2 --set epochs=8 --tiny depth=4
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _value(value)
    return out


def held_out_metrics(encoder: Any, data_dir: Path) -> dict[str, float]:
    from training.data import load_image, read_dataset
    from training.metrics import retrieval_metrics, scalar_metrics

    photos = read_dataset(data_dir)
    emb = encoder.embed([load_image(p.path) for p in photos], batch_size=32)
    return {k: float(v) for k, v in scalar_metrics(retrieval_metrics(emb, [p.identity for p in photos])).items()}


def run_seed(seed: int, args: argparse.Namespace, overrides: dict[str, Any], tiny: dict[str, Any]) -> dict[str, Any]:
    from evaluation.demo_data import make_demo_data
    from matcher.demo import DemoSettings, demo_train_settings
    from training.encoder import load_encoder
    from training.loop import TrainSettings, train
    from training.tiny import DEMO_TINY_VISION, build_tiny_checkpoint

    cache = Path(args.cache)
    train_dir, held_dir = cache / f"demo-{args.users}-{seed}", cache / f"demo-{args.users}-{seed + 1}"
    for d, s in ((train_dir, seed), (held_dir, seed + 1)):
        if not (d / "metadata.csv").is_file():
            make_demo_data(d, users=args.users, seed=s, overwrite=True)
    vision = {**DEMO_TINY_VISION, **tiny}
    tag = json.dumps(vision, sort_keys=True)
    ckpt = build_tiny_checkpoint(cache / f"tiny-{seed}-{abs(hash(tag)) % 10**8}", seed=seed, vision=vision)
    demo = DemoSettings(users=args.users, seed=seed)
    base = demo_train_settings(demo).model_dump()
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    settings = TrainSettings.model_validate(base)
    out = cache / f"run-{seed}"
    untrained = load_encoder(ckpt, pixel_budget=settings.pixel_budget, dim=settings.dim)
    # The untrained encoder scored with the recipe's preprocessing, so before/after differ only by training.
    untrained.face_crop, untrained.standardise = settings.face_crop, settings.standardise
    untrained.vignette = settings.vignette
    t0, c0 = time.perf_counter(), time.process_time()
    result = train([train_dir], out, base=str(ckpt), settings=settings, progress=False, resume=False)
    train_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    trained = load_encoder(out)
    before, after = held_out_metrics(untrained, held_dir), held_out_metrics(trained, held_dir)
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "seed": seed,
        "train_s": round(train_s, 1),
        "cpu_s": round(cpu_s, 1),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "val_map_by_epoch": [round(e["val"]["map@r"], 3) for e in epochs],
        "before": {k: round(before[k], 4) for k in ("recall@1", "map@r", "mean_same_dist", "mean_diff_dist")},
        "after": {k: round(after[k], 4) for k in ("recall@1", "map@r", "mean_same_dist", "mean_diff_dist")},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--users", type=int, default=120)
    parser.add_argument("--set", nargs="*", default=[], help="TrainSettings overrides, key=value (JSON values)")
    parser.add_argument("--tiny", nargs="*", default=[], help="tiny vision config overrides, key=value")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default="/tmp/train-recipe")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    overrides, tiny = _pairs(args.set), _pairs(args.tiny)
    rows = []
    for seed in args.seeds:
        row = run_seed(seed, args, overrides, tiny)
        row["label"] = args.label
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{args.label} set={overrides} tiny={tiny}")
    print("seed | train s | cpu s | best ep | r@1 before -> after | MAP@R before -> after | same / other dist after")
    for r in rows:
        b, a = r["before"], r["after"]
        print(f"{r['seed']} | {r['train_s']} | {r['cpu_s']} | {r['best_epoch']}/{r['epochs_run']} | "
              f"{b['recall@1']:.3f} -> {a['recall@1']:.3f} | {b['map@r']:.3f} -> {a['map@r']:.3f} | "
              f"{a['mean_same_dist']:.3f} / {a['mean_diff_dist']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
