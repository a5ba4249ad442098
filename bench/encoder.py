"""Encoder speed and memory on this machine: seconds per image and peak RSS, one subprocess per setting.

Settings: the tiny test encoder, and a tower of Qwen3-VL-2B's real size (random weights from its config, no
download), each at two pixel budgets. Each setting runs in a fresh process so its peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) is its own; ``tracemalloc`` would miss torch's allocations.

    OMP_NUM_THREADS=2 python bench/encoder.py   # full table (minutes: the real-size tower is slow)
    python bench/encoder.py --quick              # smoke run: tiny + one real-size image at 256x256
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cpu_line, markdown_table, photos, rss_mb, run_settings  # noqa: E402 - a script beside this one

BUDGETS = {"256x256": 256 * 256, "448x448": 448 * 448}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one setting in this process; returns the measured row."""
    import torch

    from training.encoder import build_encoder, load_encoder
    from training.tiny import build_tiny_checkpoint, real_vision_config

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    rss_before_model = rss_mb()
    t0 = time.perf_counter()
    if spec["model"] == "tiny":
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = build_tiny_checkpoint(Path(tmp) / "tiny", seed=0)
            encoder = load_encoder(
                ckpt, device="cpu", dtype=spec["dtype"], pixel_budget=spec["budget"], dim=512
            )
    else:
        from transformers import Qwen3VLVisionModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            tower = Qwen3VLVisionModel(real_vision_config())
        encoder = build_encoder(
            tower, pixel_budget=spec["budget"], dim=512, device="cpu", dtype=spec["dtype"]
        )
    load_s = time.perf_counter() - t0
    params = sum(p.numel() for p in encoder.tower.parameters())
    t0 = time.perf_counter()
    encoder.compute_id()  # done once per load; hashes every weight
    id_s = time.perf_counter() - t0
    images = photos(spec["images"] + 1)
    encoder.embed(images[:1])  # warm-up: first-call allocations and kernel selection
    _, grid = encoder.preprocess(images[:1])
    tokens = int(grid.prod(-1)[0]) // encoder.merge_size**2
    t0 = time.perf_counter()
    encoder.embed(images[1:], batch_size=spec["batch_size"])
    run_s = time.perf_counter() - t0
    return {
        "model": spec["model"],
        "params_m": params / 1e6,
        "budget": spec["budget_name"],
        "dtype": spec["dtype"],
        "tokens": tokens,
        "images": spec["images"],
        "batch": spec["batch_size"],
        "threads": torch.get_num_threads(),
        "s_per_image": run_s / spec["images"],
        "load_s": load_s,
        "id_s": id_s,
        "rss_before_mb": rss_before_model,
        "peak_rss_mb": rss_mb(),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    head = ["model", "params (M)", "budget", "dtype", "tokens/img", "images", "batch", "threads",
            "s/image", "load s", "id hash s", "peak RSS MB", "RSS at start MB"]
    cells = []
    for r in rows:
        cells.append([
            r["model"], f"{r['params_m']:.1f}", r["budget"], r["dtype"], str(r["tokens"]), str(r["images"]),
            str(r["batch"]), str(r["threads"]), f"{r['s_per_image']:.4f}", f"{r['load_s']:.1f}",
            f"{r['id_s']:.2f}", f"{r['peak_rss_mb']:.0f}", f"{r['rss_before_mb']:.0f}",
        ])
    return markdown_table(head, cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="tiny at both budgets + 1 real-size image at 256x256"
    )
    parser.add_argument("--images", type=int, default=8, help="images per real-size setting (default 8)")
    parser.add_argument("--tiny-images", type=int, default=64, help="images per tiny setting (default 64)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--models", default="tiny,real", help="comma list of tiny, real")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    specs: list[dict[str, Any]] = []
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for model in models:
        for name, budget in BUDGETS.items():
            n = args.tiny_images if model == "tiny" else args.images
            if args.quick:
                if model == "real" and name != "256x256":
                    continue
                n = 8 if model == "tiny" else 1
            specs.append({"model": model, "budget": budget, "budget_name": name, "images": n,
                          "batch_size": 1 if (args.quick and model == "real") else args.batch_size,
                          "dtype": args.dtype, "threads": args.threads})
    rows = run_settings(__file__, specs, lambda s: f"{s['model']} at {s['budget_name']} ({s['images']} images)")
    print(_table(rows))
    print(f"\n{cpu_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
