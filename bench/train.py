"""Training speed and memory: steps/s and peak memory per mode, one subprocess per setting.

Two parts:

- the tiny test encoder on CPU: optimiser steps per second and peak RSS of each mode (``head`` = head on
  cached pooled features, ``frozen`` = head trained through a frozen tower, ``last_blocks``, ``lora``,
  ``full``) at P x K = 8 x 2;
- a tower of Qwen3-VL-2B's real size (random weights from its config, no download): the memory and time of
  ONE training step at batch 8 (P x K = 4 x 2) at the 448 x 448 pixel budget, per mode. On a CUDA GPU the
  peak is ``torch.cuda.max_memory_allocated`` (bf16 autocast, activation checkpointing where weights train);
  on CPU it is the process's peak RSS in fp32.

Each setting runs in a fresh process, so its peak is its own.

    OMP_NUM_THREADS=2 python bench/train.py --models tiny               # tiny only (about a minute)
    python bench/train.py --models real --real-modes frozen,last_blocks  # real size (minutes, >10 GB)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cpu_line, markdown_table, photos, rss_mb, run_settings  # noqa: E402 - a script beside this one

TINY_MODES = ("head", "frozen", "last_blocks", "lora", "full")
REAL_MODES = ("frozen", "last_blocks", "lora", "full")


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one setting in this process; returns the measured row."""
    import tempfile

    import torch

    from training.encoder import build_encoder, load_encoder
    from training.loop import TrainSettings, batch_loss, build_model
    from training.losses import build_loss
    from training.tiny import build_tiny_checkpoint, real_vision_config

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mode = spec["mode"]
    # "frozen" is head mode without the feature cache: the tower runs (without grad) on every step.
    settings = TrainSettings(mode="head" if mode == "frozen" else mode, pixel_budget=spec["budget"],
                             dim=512, unfreeze_blocks=spec["unfreeze_blocks"])
    bf16 = device.type == "cuda"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if spec["model"] == "tiny":
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = build_tiny_checkpoint(Path(tmp) / "tiny", seed=0)
                base = load_encoder(ckpt, device=device, dtype="float32", pixel_budget=spec["budget"], dim=512)
        else:
            from transformers import Qwen3VLVisionModel

            tower = Qwen3VLVisionModel(real_vision_config())
            dtype = torch.bfloat16 if bf16 and mode in ("frozen", "head", "lora") else torch.float32
            base = build_encoder(tower, pixel_budget=spec["budget"], dim=512, device=device, dtype=dtype)
    encoder, groups = build_model(base, settings)
    trainable = sum(p.numel() for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, weight_decay=0.05)
    loss_fn = build_loss(["supcon"])
    p, k = spec["p"], spec["k"]
    labels = torch.arange(p).repeat_interleave(k)
    images = photos(p * k, diagonal=True)
    pixel_values, grid = encoder.preprocess(images)
    if mode == "head":
        with torch.no_grad():
            batch: tuple[torch.Tensor, ...] = (encoder.pool(pixel_values, grid).float(), labels)
    else:
        batch = (pixel_values, grid, labels)
    encoder.train()
    if mode in ("head", "frozen", "lora"):
        encoder.tower.eval()

    def step() -> None:
        loss = batch_loss(encoder, batch, loss_fn, autocast=bf16)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for g in groups for q in g["params"]], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step()  # warm-up (allocates optimiser state); with steps == 0 it is the one step measured
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(spec["steps"]):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    n_steps = spec["steps"] or 1
    if not spec["steps"]:
        elapsed = first
    tokens = int(grid.prod(-1)[0]) // encoder.merge_size**2
    return {
        "model": spec["model"], "mode": mode, "device": str(device), "batch": p * k, "tokens": tokens,
        "trainable_m": trainable / 1e6, "steps": n_steps, "first_step_s": first,
        "steps_per_s": n_steps / elapsed, "s_per_step": elapsed / n_steps,
        "peak_mb": (torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else rss_mb(),
        "peak_kind": "cuda allocated" if device.type == "cuda" else "process RSS",
        "threads": torch.get_num_threads(),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    head = ["model", "mode", "device", "batch", "tokens/img", "trainable (M)", "steps/s", "s/step",
            "peak MB", "peak of", "threads"]
    cells = []
    for r in rows:
        cells.append([
            r["model"], r["mode"], r["device"], str(r["batch"]), str(r["tokens"]), f"{r['trainable_m']:.3f}",
            f"{r['steps_per_s']:.2f}", f"{r['s_per_step']:.3f}", f"{r['peak_mb']:.0f}", r["peak_kind"],
            str(r["threads"]),
        ])
    return markdown_table(head, cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", default="tiny,real", help="comma list of tiny, real")
    parser.add_argument("--tiny-modes", default=",".join(TINY_MODES))
    parser.add_argument("--real-modes", default=",".join(REAL_MODES))
    parser.add_argument("--tiny-steps", type=int, default=20, help="timed steps per tiny setting")
    parser.add_argument("--real-steps", type=int, default=1,
                        help="timed steps per real-size setting after the warm-up (0: time the first step)")
    parser.add_argument("--tiny-budget", type=int, default=128 * 128)
    parser.add_argument("--real-budget", type=int, default=448 * 448)
    parser.add_argument("--unfreeze-blocks", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    specs: list[dict[str, Any]] = []
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if "tiny" in models:
        for mode in (m.strip() for m in args.tiny_modes.split(",") if m.strip()):
            specs.append({"model": "tiny", "mode": mode, "budget": args.tiny_budget, "p": 8, "k": 2,
                          "steps": args.tiny_steps, "threads": args.threads, "unfreeze_blocks": 1})
    if "real" in models:
        for mode in (m.strip() for m in args.real_modes.split(",") if m.strip()):
            specs.append({"model": "real", "mode": mode, "budget": args.real_budget, "p": 4, "k": 2,
                          "steps": args.real_steps, "threads": args.threads,
                          "unfreeze_blocks": args.unfreeze_blocks})
    rows = run_settings(__file__, specs, lambda s: f"{s['model']} {s['mode']}")
    print(_table(rows))
    print(f"\n{cpu_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
