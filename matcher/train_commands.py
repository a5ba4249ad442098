"""Training-side commands: ``build-tiny-encoder``, ``embed`` (and ``train``, added by the training work).

Each command is added by a small ``_add_<name>(sub)`` function; torch and transformers are imported inside
the handlers so ``matcher --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse has no public type for it
    """Add this package's commands to the ``matcher`` parser."""
    _add_build_tiny_encoder(sub)
    _add_embed(sub)
    _add_train(sub)


def _add_build_tiny_encoder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-tiny-encoder",
        help="write a tiny randomly-initialised Qwen3-VL checkpoint (for tests and demos, no download)",
        description="Write a full Qwen3-VL checkpoint in Hugging Face format, a few MB in size, with random "
        "weights: the real encoder code path without downloading the 2B model. Its vectors mean nothing "
        "until it is trained; use it to try ingest, train and serve offline, e.g. "
        "'matcher build-tiny-encoder .matcher/tiny' then 'matcher ingest PHOTOS --metadata CSV --encoder "
        ".matcher/tiny'.",
    )
    p.add_argument("out", type=Path, metavar="OUT", help="directory to write (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    p.set_defaults(func=_build_tiny_encoder)


def _build_tiny_encoder(args: argparse.Namespace, settings: Settings) -> int:
    from training.tiny import build_tiny_checkpoint

    out = build_tiny_checkpoint(args.out, seed=args.seed)
    print(f"tiny Qwen3-VL checkpoint written to {out}")
    return 0


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="embed image files and print each vector's shape and norm",
        description="Embed IMAGE files with the photo encoder (the same loader and limits as ingestion) and "
        "print each vector's shape and L2 norm, or with --json the vectors themselves. Stores nothing. "
        "Example: 'matcher embed a.jpg b.jpg --encoder .matcher/tiny --json'.",
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    p.add_argument(
        "--encoder", metavar="SRC", help="hub id, checkpoint or export dir (MATCHER_ENCODER__SOURCE)"
    )
    p.add_argument("--device", help="auto, cpu, cuda, ... (MATCHER_ENCODER__DEVICE)")
    p.add_argument(
        "--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="(MATCHER_ENCODER__DTYPE)"
    )
    p.add_argument("--pixel-budget", type=int, help="max pixels per image (MATCHER_ENCODER__PIXEL_BUDGET)")
    p.add_argument("--dim", type=int, help="output dimension (MATCHER_ENCODER__DIM)")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object: encoder_id, dim, each path, norm and vector"
    )
    p.set_defaults(func=_embed)


def _embed(args: argparse.Namespace, settings: Settings) -> int:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from engine.errors import InvalidInput
    from training.encoder import load_encoder_from_settings

    # Flags win over MATCHER_ENCODER__*; an export's own dim and budget win over unset defaults.
    overrides = {k: v for k, v in (("device", args.device), ("dtype", args.dtype),
                                   ("pixel_budget", args.pixel_budget), ("dim", args.dim)) if v is not None}
    enc_settings = settings.encoder.model_copy(update=overrides)
    encoder = load_encoder_from_settings(enc_settings, source=args.encoder)
    images = []
    for path in args.images:
        try:
            with Image.open(path) as im:
                im.load()
                images.append(im.copy())
        except (OSError, UnidentifiedImageError) as exc:
            raise InvalidInput(f"{path}: not a readable image ({exc})") from exc
    vectors = encoder.embed(images, batch_size=enc_settings.batch_size, progress=settings.progress)
    if args.json:
        record = {
            "encoder_id": encoder.encoder_id,
            "dim": encoder.dim,
            "images": [
                {"path": str(p), "norm": float(np.linalg.norm(v)), "vector": [round(float(x), 6) for x in v]}
                for p, v in zip(args.images, vectors, strict=True)
            ],
        }
        print(json.dumps(record))
        return 0
    print(f"encoder {encoder.encoder_id}  dim {encoder.dim}  source {encoder.source}")
    for path, vec in zip(args.images, vectors, strict=True):
        print(f"{path}\tshape {tuple(vec.shape)}\tnorm {float(np.linalg.norm(vec)):.6f}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune the photo encoder on photos labelled by identity and export it for ingestion",
        description="Metric-learning training (P x K batches, SupCon and/or batch-hard triplet loss), "
        "validated every epoch on held-out identities; the best epoch is exported into --out, which "
        "'matcher ingest --encoder DIR' reads. Re-running the same command resumes an interrupted run.",
        formatter_class=_TrainHelpFormatter,
    )
    p.add_argument("data", nargs="+", type=Path, metavar="DATA_DIR",
                   help="training photos: metadata.csv, a CSV with image_path,identity, raw/profiles/, or a "
                   "seed-layout root (raw/profiles/ + augmented/generated/mapping.csv: generated images "
                   "train, real users' photos validate)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder (export + checkpoints)")
    p.add_argument("--base", metavar="SRC",
                   help="starting encoder: hub id, checkpoint dir, or 'tiny' (built into DIR/base); "
                   "default: MATCHER_ENCODER__SOURCE (Qwen/Qwen3-VL-2B-Instruct)")
    p.add_argument("--val-data", type=Path, action="append", default=[], metavar="DIR",
                   help="validation photos (repeatable); default: hold out identities of DATA_DIR")
    p.add_argument("--config", type=Path, metavar="JSON", help="TrainSettings as JSON; flags override it")
    p.add_argument("--mode", choices=["head", "last_blocks", "lora", "full"], help="what trains besides the head")
    p.add_argument("--epochs", type=int, help="epochs at most (early stopping may end sooner)")
    p.add_argument("--p", type=int, dest="p", help="identities per batch")
    p.add_argument("--k", type=int, dest="k", help="photos per identity in a batch")
    p.add_argument("--grad-accum", type=int, help="batches per optimiser step")
    p.add_argument("--lr", type=float, help="head learning rate")
    p.add_argument("--tower-lr", type=float, help="tower / adapter learning rate")
    p.add_argument("--loss", dest="losses", help="comma-separated: supcon, triplet")
    p.add_argument("--margin", type=float, help="triplet margin (cosine distance)")
    p.add_argument("--temperature", type=float, help="SupCon temperature")
    p.add_argument("--dim", type=int, help="output dimension")
    p.add_argument("--head-hidden", type=int, help="hidden width of a 2-layer head (0: linear)")
    p.add_argument("--pixel-budget", type=int, help="max pixels per image fed to the tower")
    p.add_argument("--unfreeze-blocks", type=int, help="last_blocks mode: blocks that train")
    p.add_argument("--lora-rank", type=int, help="lora mode: adapter rank")
    p.add_argument("--cache-views", type=int, help="head mode: augmented views cached per photo")
    p.add_argument("--val-fraction", type=float, help="share of identities held out for validation")
    p.add_argument("--val-identities", type=int, help="identities held out (instead of --val-fraction)")
    p.add_argument("--patience", type=int, help="epochs without a better MAP@R before stopping")
    p.add_argument("--seed", type=int, help="seed of the split, batches and augmentation")
    p.add_argument("--device", help="auto, cpu, cuda, ...")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="auto: bf16 on a GPU, fp32 on CPU")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--checkpoint-every", type=int, help="also save a resume point every N steps")
    p.add_argument("--no-resume", action="store_true", help="start over even if DIR holds an interrupted run")
    p.set_defaults(func=_train)


class _TrainHelpFormatter(argparse.HelpFormatter):
    """Appends each training flag's default, read from ``TrainSettings`` when help is printed.

    The flags themselves default to None (so that only the flags given override ``--config``); reading the
    defaults at print time keeps torch out of ``matcher --help``.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.dest in _TRAIN_FLAGS:
            text = f"{text} (default: {_train_default(action.dest)})".lstrip()
        return text


def _train_default(name: str) -> str:
    """``TrainSettings``' default for the field ``name``, as the flag takes it."""
    from training.settings import DEFAULT_TOWER_LR, TrainSettings

    if name == "tower_lr":
        return "by mode: " + ", ".join(f"{mode} {lr:g}" for mode, lr in DEFAULT_TOWER_LR.items())
    if name == "val_identities":
        return "none: --val-fraction decides"
    value = TrainSettings().model_dump()[name]
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


_TRAIN_FLAGS = ("mode", "epochs", "p", "k", "grad_accum", "lr", "tower_lr", "losses", "margin", "temperature",
                "dim", "head_hidden", "pixel_budget", "unfreeze_blocks", "lora_rank", "cache_views",
                "val_fraction", "val_identities", "patience", "seed", "device", "precision", "workers",
                "checkpoint_every")


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from engine.errors import InvalidInput
    from training.loop import TrainSettings, train
    from training.seed_layout import resolve_sources

    values: dict[str, object] = {}
    if args.config:
        try:
            values = json.loads(args.config.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"{args.config}: cannot read the settings JSON: {exc}") from exc
    for name in _TRAIN_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = [v.strip() for v in value.split(",") if v.strip()] if name == "losses" else value
    try:
        train_settings = TrainSettings.model_validate(values)
    except ValidationError as exc:
        raise InvalidInput(f"train settings: {exc}") from exc
    base = args.base or settings.encoder.source
    if base == "tiny":
        from training.tiny import build_tiny_checkpoint

        base_dir = args.out / "base"
        if not (base_dir / "config.json").is_file():
            build_tiny_checkpoint(base_dir, seed=train_settings.seed)
        base = str(base_dir)
    # The seed layout (raw/profiles + augmented/generated with mapping.csv): generated train, real validate.
    data, val_data = resolve_sources(args.data, args.val_data, args.out, val_users=train_settings.val_identities,
                                     val_fraction=train_settings.val_fraction, seed=train_settings.seed)
    if data != list(args.data) and (args.out / "seed_split.json").is_file():
        c = json.loads((args.out / "seed_split.json").read_text(encoding="utf-8"))
        print(f"training on {c['train_generated_images']} generated images of {c['train_source_users']} users, "
              f"validating on {c['val_real_photos']} real photos of {c['val_users']} others "
              f"({c['withheld_generated_images']} generated images of those withheld; split in {args.out})")
    result = train(data, args.out, base=base, settings=train_settings, val_data=val_data,
                   resume=not args.no_resume, progress=settings.progress)
    m, u = result.best_metrics, result.untrained_metrics
    print(f"encoder {result.encoder_id} exported to {result.out_dir} (best epoch {result.best_epoch} of "
          f"{result.epochs_run}, {result.steps} steps, {result.seconds:.0f} s)")
    for key in ("recall@1", "recall@5", "map@r", "mean_same_dist", "mean_diff_dist"):
        if key in m:
            print(f"  {key:15s} {u.get(key, float('nan')):.4f} -> {m[key]:.4f}")
    return 0
