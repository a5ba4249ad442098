"""What a machine with a CUDA GPU runs first: the real-size Qwen3-VL-2B vision tower, end to end, in minutes.

Sections, each timed and reported on its own (one failing does not stop the others):

- ``machine``: torch / transformers / peft versions, GPU name, compute capability, memory;
- ``base``: the vision tower of Qwen3-VL-2B built from its real config with random weights (no download),
  saved as a checkpoint folder that the product's own loader (``training.encoder.load_encoder``) reads;
- ``embed_448`` / ``embed_256``: embedding throughput in bf16 at 448² and 256² pixel budgets, end to end
  (decode-free PIL images -> preprocessing -> tower -> head) and tower-only (preprocessed batches);
- ``train_last_blocks`` / ``train_lora``: a short training run on demo photos (P x K batches, augmentation,
  SupCon, AdamW) through ``training.trainable.build_model`` with bf16 autocast and activation
  checkpointing: seconds per step (data and compute apart), images/s, peak GPU memory;
- ``fp8``: where the GPU supports FP8 (compute capability >= 8.9; the A10G of ml.g5 does not), the tower
  quantized to fine-grained FP8 by transformers, reloaded through the product's loader: throughput at 448²
  and its agreement (cosine) with the bf16 embeddings.

Prints ONE JSON object on stdout (logs go to stderr). Without a CUDA GPU it prints ``{"skipped": ...}`` and
exits 0; ``--dry-run`` runs every section on CPU at tiny sizes (the tiny random tower) so the script itself is
tested (``tests/bench/test_gpu_check.py``). Total time is capped (``--budget-s``, default 450 s); a section
that would not fit is skipped with that reason.

    bench/gpu_check.sh                 # on the GPU machine
    bench/gpu_check.sh --dry-run       # here, CPU, tiny sizes, about half a minute
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

log = logging.getLogger("gpu_check")


@dataclass(frozen=True)
class Profile:
    """Sizes of one kind of run: the real tower on a GPU, or the tiny one for the dry run."""

    name: str
    embed_images: int  # images per throughput measurement
    embed_batch: int
    tower_repeats: int  # tower-only passes over one preprocessed batch
    train_users: int  # demo population the training photos come from
    train_budget: int
    p: int
    k: int
    train_steps: int  # timed steps after one warm-up step
    unfreeze_blocks: int


REAL = Profile(
    "real",
    embed_images=256,
    embed_batch=32,
    tower_repeats=5,
    train_users=64,
    train_budget=448 * 448,
    p=8,
    k=4,
    train_steps=8,
    unfreeze_blocks=4,
)
TINY = Profile(
    "tiny",
    embed_images=8,
    embed_batch=4,
    tower_repeats=2,
    train_users=16,
    train_budget=64 * 64,
    p=4,
    k=2,
    train_steps=2,
    unfreeze_blocks=1,
)
# A rough share of the budget each section needs on a GPU, to skip what cannot finish rather than be killed.
NEEDS_S = {"embed_448": 45, "embed_256": 30, "train_last_blocks": 60, "train_lora": 60, "fp8": 60}


class Sections:
    """Runs named sections under a time budget and collects their results (or errors) for the summary."""

    def __init__(self, budget_s: float, dry_run: bool) -> None:
        self.start = time.monotonic()
        self.budget_s = budget_s
        self.dry_run = dry_run
        self.results: dict[str, dict[str, Any]] = {}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        need = 0 if self.dry_run else NEEDS_S.get(name, 0)
        if self.left() < need:
            self.results[name] = {"skipped": f"time budget: {self.left():.0f} s left, about {need} s needed"}
            return None
        t0 = time.monotonic()
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - a section's failure is a result to report
            log.error("%s failed:\n%s", name, traceback.format_exc())
            out = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        out.setdefault("seconds", round(time.monotonic() - t0, 2))
        self.results[name] = out
        log.info("%s: %s", name, json.dumps({k: v for k, v in out.items() if not k.startswith("_")}))
        return out


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _peak(device: Any, out: dict[str, Any]) -> Iterator[None]:
    """Peak GPU memory of the block into ``out`` (``peak_gpu_mib`` allocated, ``peak_gpu_reserved_mib``)."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
        out["peak_gpu_reserved_mib"] = round(torch.cuda.max_memory_reserved(device) / 2**20)
    else:
        out["peak_gpu_mib"] = None


def machine(device: Any) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
    }
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        info["peft"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            {
                "gpu": props.name,
                "capability": list(torch.cuda.get_device_capability(device)),
                "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "bf16": torch.cuda.is_bf16_supported(),
            }
        )
    return info


def build_base(profile: Profile, device: Any, out_dir: Path) -> dict[str, Any]:
    """A random-weight tower of the profile's size saved as a checkpoint folder ``load_encoder`` reads."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen3VLVisionModel
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig

    from training.tiny import qwen3_vl_image_processor_config, real_vision_config_dict, tiny_vision_config_dict

    config = Qwen3VLVisionConfig(**(real_vision_config_dict() if profile.name == "real" else tiny_vision_config_dict()))
    t0 = time.monotonic()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with torch.device(device):  # initialised where it runs: a 407 M-parameter init on CPU takes long
            tower: Any = Qwen3VLVisionModel(config)
    init_s = time.monotonic() - t0
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out_dir.mkdir(parents=True, exist_ok=True)
    tower.config.save_pretrained(out_dir)
    save_file(
        {k: v.detach().to("cpu", dtype).contiguous() for k, v in tower.state_dict().items()},
        str(out_dir / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (out_dir / "preprocessor_config.json").write_text(json.dumps(qwen3_vl_image_processor_config()))
    params = sum(p.numel() for p in tower.parameters())
    del tower
    return {
        "params_m": round(params / 1e6, 1),
        "depth": config.depth,
        "hidden": config.hidden_size,
        "out_hidden": config.out_hidden_size,
        "saved_dtype": str(dtype).removeprefix("torch."),
        "init_s": round(init_s, 2),
    }


def _demo_photos(users: int, folder: Path) -> list[Any]:
    from evaluation.demo_data import make_demo_data
    from training.data import read_dataset

    if not (folder / "metadata.csv").is_file():
        make_demo_data(folder, users=users, seed=7)
    return read_dataset(folder)


def embed(
    profile: Profile, device: Any, base: Path, budget: int, photos: list[Any], reference: dict[str, Any] | None = None
) -> dict[str, Any]:
    """End-to-end and tower-only embedding throughput of the tower in ``base`` at ``budget`` pixels."""
    import numpy as np
    import torch

    from training.encoder import load_encoder
    from training.images import load_image

    dtype = "bfloat16" if device.type == "cuda" else "float32"
    out: dict[str, Any] = {"budget": budget, "dtype": dtype, "batch": profile.embed_batch}
    with _peak(device, out):
        encoder = load_encoder(base, device=device, dtype=dtype, pixel_budget=budget, dim=512)
        decoded = [load_image(p.path) for p in photos[: profile.embed_images]]
        images = (decoded * (profile.embed_images // len(decoded) + 1))[: profile.embed_images]
        encoder.embed(images[: profile.embed_batch], batch_size=profile.embed_batch)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        vectors = encoder.embed(images, batch_size=profile.embed_batch)
        _sync(device)
        seconds = time.perf_counter() - t0
        pixel_values, grid = encoder.preprocess(images[: profile.embed_batch])
        with torch.no_grad():
            encoder.pool(pixel_values, grid)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(profile.tower_repeats):
                encoder.pool(pixel_values, grid)
            _sync(device)
            tower_s = time.perf_counter() - t0
    norms = np.linalg.norm(vectors, axis=1)
    out.update(
        {
            "images": len(images),
            "tokens_per_image": int(grid.prod(-1)[0]) // encoder.merge_size**2,
            "img_per_s": round(len(images) / seconds, 2),
            "tower_img_per_s": round(profile.tower_repeats * profile.embed_batch / tower_s, 2),
            "unit_norm": bool(np.allclose(norms, 1.0, atol=1e-3)),
            "encoder_id": encoder.encoder_id,
        }
    )
    if reference is not None:
        ref = reference["vectors"][: len(vectors)]
        out["mean_cosine_to_bf16"] = round(float((ref * vectors).sum(axis=1).mean()), 4)
    out["_vectors"] = vectors
    del encoder
    return out


def train_short(profile: Profile, device: Any, base: Path, mode: str, photos: list[Any]) -> dict[str, Any]:
    """A short training run of ``mode`` on demo photos: timed steps, loss, peak memory."""
    import math

    import torch

    from training.augment import Augment, item_rng
    from training.batches import shrink
    from training.data import PhotoDataset
    from training.images import load_image
    from training.losses import build_loss
    from training.samplers import PKBatchSampler
    from training.settings import TrainSettings
    from training.trainable import batch_loss, build_model, use_autocast

    if mode == "lora":
        try:
            import peft  # noqa: F401
        except ImportError:
            return {"skipped": "peft is not installed (pip install 'profile-matcher[train]')"}
    settings = TrainSettings(
        mode=mode,
        pixel_budget=profile.train_budget,
        dim=512,
        p=profile.p,
        k=profile.k,
        unfreeze_blocks=profile.unfreeze_blocks,
        device=str(device),
        precision="auto",
        activation_checkpointing=True,
    )
    out: dict[str, Any] = {"mode": mode, "batch": profile.p * profile.k, "budget": profile.train_budget}
    with _peak(device, out):
        encoder, groups = build_model(str(base), settings)
        autocast = use_autocast(settings, device)
        optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
        loss_fn = build_loss(
            settings.losses,
            margin=settings.margin,
            temperature=settings.temperature,
            distance=settings.distance,
            weights=settings.loss_weights,
        )
        dataset = PhotoDataset(photos)
        sampler = PKBatchSampler(dataset.labels, p=settings.p, k=settings.k, seed=0)
        augment = Augment(settings.augment)
        max_pixels = settings.work_pixels * settings.pixel_budget
        batches: list[list[int]] = []
        for epoch in range(math.ceil((profile.train_steps + 1) / max(1, len(sampler)))):
            sampler.set_epoch(epoch)
            batches.extend(sampler)
        batches = batches[: profile.train_steps + 1]
        if len(batches) < profile.train_steps + 1:
            raise RuntimeError(f"only {len(batches)} batches from {len(dataset.identities)} identities")
        encoder.train()
        if mode == "lora":
            encoder.tower.eval()
        tower_model = encoder.tower.get_base_model() if mode == "lora" else encoder.tower
        data_s, compute_s, losses = [], [], []
        for b, batch in enumerate(batches):
            t0 = time.perf_counter()
            images = [
                augment(shrink(load_image(dataset.photos[i].path), max_pixels), item_rng(0, 0, b, j))
                for j, i in enumerate(batch)
            ]
            pixel_values, grid = encoder.preprocess(images)
            labels = torch.as_tensor(dataset.labels[batch])
            t1 = time.perf_counter()
            loss = batch_loss(encoder, (pixel_values, grid, labels), loss_fn, autocast=autocast)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([q for g in groups for q in g["params"]], settings.clip_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            t2 = time.perf_counter()
            data_s.append(t1 - t0)
            compute_s.append(t2 - t1)
            losses.append(float(loss.detach()))
    timed = slice(1, None)  # step 0 warms up (allocations, optimiser state, kernels)
    step_s = sum(data_s[timed]) / len(data_s[timed]) + sum(compute_s[timed]) / len(compute_s[timed])
    out.update(
        {
            "trainable_m": round(sum(p.numel() for g in groups for p in g["params"]) / 1e6, 2),
            "tower_dtype": str(next(tower_model.parameters()).dtype).removeprefix("torch."),
            "autocast_bf16": autocast,
            # Read off the modules (the flag transformers sets on each block), not the deprecated property.
            "activation_checkpointing": any(getattr(m, "gradient_checkpointing", False) for m in tower_model.modules()),
            "tokens_per_image": int(grid.prod(-1)[0]) // encoder.merge_size**2,
            "steps_timed": len(compute_s[timed]),
            "first_step_s": round(data_s[0] + compute_s[0], 3),
            "data_s_per_step": round(sum(data_s[timed]) / len(data_s[timed]), 3),
            "compute_s_per_step": round(sum(compute_s[timed]) / len(compute_s[timed]), 3),
            "s_per_step": round(step_s, 3),
            "train_img_per_s": round(profile.p * profile.k / step_s, 2),
            "loss_first": round(losses[0], 4),
            "loss_last": round(losses[-1], 4),
            "loss_finite": all(math.isfinite(v) for v in losses),
        }
    )
    del encoder, optimizer
    return out


def fp8(
    profile: Profile, device: Any, base: Path, work: Path, photos: list[Any], bf16_448: dict[str, Any] | None
) -> dict[str, Any]:
    """Fine-grained FP8 weights (transformers' quantizer), reloaded through ``load_encoder``."""
    import torch

    if device.type != "cuda":
        return {"skipped": f"FP8 needs a CUDA GPU of compute capability >= 8.9; this run is on {device}"}
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 9):
        return {"skipped": f"compute capability {cap[0]}.{cap[1]} < 8.9: no FP8 tensor cores (A10G is 8.6)"}
    try:
        import accelerate  # noqa: F401 - transformers' FP8 quantizer needs it
    except ImportError:
        return {"skipped": "transformers' FP8 quantizer needs accelerate (pip install accelerate)"}
    from transformers import FineGrainedFP8Config, Qwen3VLVisionModel

    from training.qwen3_vl import TOWER_KEY_MAPPING

    fp8_dir = work / "tower-fp8"
    t0 = time.monotonic()
    quantized: Any = Qwen3VLVisionModel.from_pretrained(
        base,
        quantization_config=FineGrainedFP8Config(),
        dtype=torch.bfloat16,
        device_map=str(device),
        key_mapping=TOWER_KEY_MAPPING,
    )
    quantized.save_pretrained(fp8_dir)
    (fp8_dir / "preprocessor_config.json").write_text((base / "preprocessor_config.json").read_text())
    del quantized
    quantize_s = time.monotonic() - t0
    ref = {"vectors": bf16_448["_vectors"]} if bf16_448 and "_vectors" in bf16_448 else None
    out = embed(profile, device, fp8_dir, 448 * 448, photos, reference=ref)
    out["quantize_s"] = round(quantize_s, 2)
    return out


# The product's plan (docs/sagemaker.md, section 1): 83 source users x 32 generated images train, 52 real
# photos of 17 users validate; the job's defaults P x K = 16 x 4 and 8 cached views in head mode.
PLAN = {"train_users": 83, "train_images": 2656, "val_photos": 52, "p": 16, "k": 4, "cache_views": 8}


def plan_estimate(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Seconds per epoch for the plan's data, from this run's own figures (448², the job's defaults).

    Training steps scale by images per step from the check's batch to the plan's P x K; data preparation
    is counted as measured here, in one process (the job spreads it over its DataLoader workers).
    """
    embed = results.get("embed_448", {})
    img_per_s = embed.get("img_per_s")
    if not img_per_s:
        return {"skipped": "no embed_448 figure"}
    steps = PLAN["train_users"] // PLAN["p"]
    batch = PLAN["p"] * PLAN["k"]
    validate_s = PLAN["val_photos"] / img_per_s
    out: dict[str, Any] = {
        "plan": PLAN,
        "steps_per_epoch": steps,
        "validation_s": round(validate_s, 1),
        "head_mode_cache_s": round(PLAN["train_images"] * PLAN["cache_views"] / img_per_s, 1),
    }
    for mode in ("last_blocks", "lora"):
        run = results.get(f"train_{mode}", {})
        if "s_per_step" in run:
            scale = batch / run["batch"]
            compute = run["compute_s_per_step"] * scale
            data = run["data_s_per_step"] * scale
            out[f"{mode}_epoch_s"] = round(steps * (compute + data) + validate_s, 1)
            out[f"{mode}_epoch_s_compute_only"] = round(steps * compute + validate_s, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny random tower, tiny sizes")
    parser.add_argument("--budget-s", type=float, default=450.0, help="total time cap (default 450 s)")
    parser.add_argument("--out", type=Path, help="also write the JSON summary to this file")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temp dir, removed after)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        summary: dict[str, Any] = {
            "skipped": "no CUDA GPU on this machine (torch.cuda.is_available() is False); "
            "run with --dry-run to check the script on CPU"
        }
        _emit(summary, args.out)
        return 0
    device = torch.device("cpu" if args.dry_run else "cuda")
    profile = TINY if args.dry_run else REAL
    if args.dry_run:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    sections = Sections(args.budget_s, args.dry_run)
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_check-")))
        base = work / "tower"
        sections.run("machine", lambda: machine(device))
        built = sections.run("base", lambda: build_base(profile, device, base))
        photos = _demo_photos(profile.train_users, work / "demo")
        if built is not None and "error" not in built:
            e448 = sections.run("embed_448", lambda: embed(profile, device, base, 448 * 448, photos))
            sections.run("embed_256", lambda: embed(profile, device, base, 256 * 256, photos))
            sections.run("train_last_blocks", lambda: train_short(profile, device, base, "last_blocks", photos))
            sections.run("train_lora", lambda: train_short(profile, device, base, "lora", photos))
            sections.run("fp8", lambda: fp8(profile, device, base, work, photos, e448))
    results = {name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in sections.results.items()}
    failed = sorted(name for name, r in results.items() if "error" in r)
    summary = {
        "profile": profile.name,
        "dry_run": args.dry_run,
        "ok": not failed,
        "failed": failed,
        "seconds": round(time.monotonic() - sections.start, 1),
        "sections": results,
        "plan_estimate": plan_estimate(results),
    }
    _emit(summary, args.out)
    return 0 if not failed else 1


def _emit(summary: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(summary, sort_keys=True)
    print(text, flush=True)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
