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


def _add_build_tiny_encoder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-tiny-encoder",
        help="write a tiny randomly-initialised Qwen3-VL checkpoint (for tests and demos, no download)",
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
    p = sub.add_parser("embed", help="embed image files and print each vector's shape and norm")
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
    p.add_argument("--json", action="store_true", help="print one JSON object with the vectors")
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
