"""Where a run stands (:class:`TrainState`), and the resume points that save it.

A resume point (``checkpoints/last.pt``) holds the trainable weights, optimiser, schedule, torch RNG and the
state; ``checkpoints/best.pt`` the same for the best epoch so far. ``run.json`` (the run record) names the
base, the settings and a digest of the data, so a resume with other settings or data is refused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.errors import InvalidInput
from training.data import Photo
from training.settings import RESUMABLE_CHANGES, TrainSettings

if TYPE_CHECKING:
    from training.encoder import Encoder

CHECKPOINT_FORMAT = 1


@dataclass
class TrainState:
    """Where the run stands; saved in checkpoints (field names are part of the checkpoint format)."""

    epoch: int = 0  # the epoch being (or to be) run, 0-based
    batch: int = 0  # next batch of that epoch
    step: int = 0  # optimiser steps done
    loss_sum: float = 0.0  # of the current epoch's finished batches (a resumed epoch keeps its average)
    loss_batches: int = 0
    best_map: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the last improvement (the early-stopping callback counts them)
    untrained: dict[str, float] = field(default_factory=dict)
    best_metrics: dict[str, float] = field(default_factory=dict)
    finished: bool = False
    stopped_early: bool = False


def trainable_state(encoder: Encoder) -> dict[str, Any]:
    """The weights a run changes: the trainable tower parameters and the whole head, as CPU copies."""
    tower = {n: p.detach().to("cpu").clone() for n, p in encoder.tower.named_parameters() if p.requires_grad}
    head = {n: t.detach().to("cpu").clone() for n, t in encoder.head.state_dict().items()}
    return {"tower": tower, "head": head}


def load_trainable_state(encoder: Encoder, state: dict[str, Any]) -> None:
    """Copy :func:`trainable_state`'s weights back into ``encoder``.

    Raises:
        InvalidInput: the checkpoint holds tower weights this model lacks.
    """
    encoder.head.load_state_dict(state["head"])
    params = dict(encoder.tower.named_parameters())
    missing = sorted(set(state["tower"]) - set(params))
    if missing:
        raise InvalidInput(f"checkpoint holds tower weights this model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, value in state["tower"].items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file: a crash mid-write never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A resume point written by the checkpointing callback.

    Raises:
        InvalidInput: another checkpoint format.
    """
    ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InvalidInput(f"{path}: checkpoint format {ckpt.get('format')} is not {CHECKPOINT_FORMAT}")
    return ckpt


def run_record(base: str, settings: TrainSettings, train: Sequence[Photo], val: Sequence[Photo]) -> dict[str, Any]:
    """``run.json``: base, settings, and a digest of each photo list (identity and path of every photo)."""

    def digest(photos: Sequence[Photo]) -> str:
        h = hashlib.blake2b(digest_size=8)
        for p in photos:
            h.update(f"{p.identity}\0{p.path}\n".encode())
        return h.hexdigest()

    return {
        "base": base,
        "settings": settings.model_dump(mode="json"),
        "train_photos": digest(train),
        "val_photos": digest(val),
    }


def check_resumable(old: dict[str, Any], new: dict[str, Any], out: Path) -> None:
    """Refuse to resume ``out``'s run (record ``old``) as a run with record ``new`` when they differ.

    Raises:
        InvalidInput: naming what differs.
    """
    changed = [k for k in ("base", "train_photos", "val_photos") if old.get(k) != new.get(k)]
    old_s, new_s = old.get("settings", {}), new["settings"]
    changed += [
        f"settings.{k}"
        for k in sorted(set(old_s) | set(new_s))
        if k not in RESUMABLE_CHANGES and old_s.get(k) != new_s.get(k)
    ]
    if changed:
        raise InvalidInput(
            f"{out} holds an interrupted run with other {', '.join(changed)}; resume it with the same "
            "settings and data, or train into another --out (or pass --no-resume to start over)"
        )
