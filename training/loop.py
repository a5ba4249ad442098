"""Training the photo encoder from folders of photos: :func:`train` wires the parts and runs the trainer.

The parts: :mod:`training.settings` (what shapes a run), :mod:`training.trainable` (what trains in each
mode), :mod:`training.batches` (P x K batches of augmented photos or cached features),
:mod:`training.evaluator` (validation retrieval metrics), :mod:`training.callbacks` (metrics log,
checkpointing, early stopping, progress) and :mod:`training.trainer` (the loop).

Every epoch, the held-out identities are embedded and scored (recall@k, MAP@R, mean same/different-person
cosine distance); the best epoch by MAP@R is kept, training stops early after ``patience`` epochs without
improvement, and the best weights are exported with :func:`training.encoder.save_encoder` into the output
folder, which :func:`training.encoder.load_encoder` then reads as is.

Output folder layout: ``encoder_card.json``, ``tower/``, ``head.safetensors``, ``preprocessor_config.json``
(the export, written at the end), ``metrics.jsonl`` (one JSON line per epoch, epoch 0 = untrained),
``model_card.md`` (the card for people: data, metrics per epoch, settings), ``checkpoints/last.pt`` and
``checkpoints/best.pt`` (resume state), ``run.json`` (settings and data of the
run), ``cache/`` (head mode's cached features).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from engine.errors import InvalidInput
from training.batches import BatchSource, FeatureBatches, ImageBatches, cache_features
from training.callbacks import Checkpointing, EarlyStopping, MetricsLog, ProgressBar, TrainerCallback
from training.card import read_epochs, write_model_card
from training.checkpoints import check_resumable, read_checkpoint, run_record
from training.data import (
    Photo,
    PhotoDataset,
    check_disjoint,
    group_by_identity,
    read_dataset,
    split_by_identity,
)
from training.evaluator import Evaluator, FeatureEvaluator, PhotoEvaluator, brief
from training.losses import build_loss
from training.samplers import PKBatchSampler
from training.settings import LossName, Mode, TrainResult, TrainSettings
from training.trainable import batch_loss, build_model, warmup_cosine
from training.trainer import Interrupted, Trainer

__all__ = [
    "Interrupted",
    "LossName",
    "Mode",
    "TrainResult",
    "TrainSettings",
    "Trainer",
    "batch_loss",
    "build_model",
    "prepare_data",
    "train",
    "warmup_cosine",
]

log = logging.getLogger(__name__)


# -- data ---------------------------------------------------------------------------------------------------
def prepare_data(
    data: Sequence[Path], val_data: Sequence[Path], settings: TrainSettings
) -> tuple[list[Photo], list[Photo]]:
    """Read the training sources (and validation sources, if any) and split them by identity.

    Without ``val_data`` the training photos are split with ``val_fraction`` / ``val_identities``.

    Raises:
        InvalidInput: unreadable data, or a person in both sets.
    """
    if not data:
        raise InvalidInput("no training data given")
    photos = sorted({p for source in data for p in read_dataset(Path(source))})
    if val_data:
        train = photos
        val = sorted({p for source in val_data for p in read_dataset(Path(source))})
    else:
        train, val = split_by_identity(
            photos,
            val_fraction=settings.val_fraction,
            val_identities=settings.val_identities,
            seed=settings.seed,
        )
    check_disjoint(train, val)
    if settings.min_train_photos > 1:
        # A person with one photo is only ever its own augmented view: a pair that teaches the photo's
        # background and clothes, not the person (measured in docs/training.md).
        groups = group_by_identity(train)
        train = [p for p in train if len(groups[p.identity]) >= settings.min_train_photos]
    return train, val


def train(
    data: Sequence[Path],
    out_dir: Path,
    *,
    base: str,
    settings: TrainSettings | None = None,
    val_data: Sequence[Path] = (),
    resume: bool = True,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> TrainResult:
    """Train the encoder on ``data`` and export the best epoch into ``out_dir``.

    Args:
        data: training sources (folders in any layout :func:`training.data.read_dataset` reads).
        out_dir: output folder (see the module docstring); created if missing.
        base: what :func:`training.encoder.load_encoder` loads as the starting point.
        val_data: validation sources; without them, the training data is split by identity.
        resume: continue from ``out_dir/checkpoints/last.pt`` when it exists.
        stop_after_steps: stop (raising :class:`Interrupted`) after this many optimiser steps of this call,
            with a resume point saved: a time-boxed job, and how tests interrupt a run.

    Raises:
        InvalidInput: bad data or settings, or a resume with other settings or data.
        Interrupted: ``stop_after_steps`` was reached.
    """
    from training.encoder import save_encoder

    settings = settings or TrainSettings()
    started = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_photos, val_photos = prepare_data(data, val_data, settings)
    train_ds, val_ds = PhotoDataset(train_photos), PhotoDataset(val_photos)
    if len(train_ds.identities) < settings.p:
        raise InvalidInput(
            f"p={settings.p} identities per batch, but training has {len(train_ds.identities)} identities"
        )
    record = run_record(base, settings, train_photos, val_photos)
    last_path = out / "checkpoints" / "last.pt"
    run_path = out / "run.json"
    resuming = resume and last_path.is_file()
    if resuming:
        check_resumable(json.loads(run_path.read_text()), record, out)
    run_path.write_text(json.dumps(record, indent=2) + "\n")

    torch.manual_seed(settings.seed)
    encoder, groups = build_model(base, settings)
    batches: BatchSource
    evaluator: Evaluator
    if settings.mode == "head":
        train_feats, val_feats = cache_features(encoder, train_ds, val_ds, settings, out / "cache", progress)
        batches = FeatureBatches(train_feats, train_ds.labels, settings.seed)
        evaluator = FeatureEvaluator(val_feats, val_ds.labels)
    else:
        if settings.augment_backend == "tensor":
            from training.tensor_augment import TensorBatches

            batches = TensorBatches(train_ds, encoder, settings)
        else:
            batches = ImageBatches(train_ds, encoder, settings)
        evaluator = PhotoEvaluator(val_photos, val_ds.labels, settings.eval_batch_size)
    callbacks: list[TrainerCallback] = [
        MetricsLog(out / "metrics.jsonl", fresh=not resuming),
        EarlyStopping(settings.patience),
        Checkpointing(out / "checkpoints", every=settings.checkpoint_every),
    ]
    if progress:
        callbacks.append(ProgressBar())
    loss = build_loss(
        settings.losses,
        margin=settings.margin,
        temperature=settings.temperature,
        distance=settings.distance,
        weights=settings.loss_weights,
        n_classes=len(train_ds.identities),
        dim=settings.dim,
        seed=settings.seed,
    ).to(encoder.device)
    loss_params = list(loss.parameters())
    if loss_params:  # proxies: their own group (no weight decay, a higher rate), saved with checkpoints
        groups = [*groups, {"params": loss_params, "lr": settings.proxy_lr, "weight_decay": 0.0, "name": "loss"}]
    trainer = Trainer(
        encoder,
        settings,
        param_groups=groups,
        sampler=PKBatchSampler(train_ds.labels, p=settings.p, k=settings.k, seed=settings.seed),
        batches=batches,
        loss=loss,
        evaluator=evaluator,
        callbacks=callbacks,
    )
    if resuming:
        trainer.load_checkpoint(read_checkpoint(last_path))
        s = trainer.state
        log.info("resuming %s at epoch %d, batch %d, step %d", out, s.epoch + 1, s.batch, s.step)
    state = trainer.train(stop_after_steps=stop_after_steps)

    card = {
        "trained": True,
        "train_settings": settings.model_dump(mode="json"),
        "data": {
            "train": train_ds.counts(),
            "val": val_ds.counts(),
            "sources": [str(Path(s)) for s in data],
            "val_sources": [str(Path(s)) for s in val_data],
        },
        "validation": {"best_epoch": state.best_epoch, **state.best_metrics},
        "untrained_validation": state.untrained,
        "epochs_run": state.epoch,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "epochs": read_epochs(out / "metrics.jsonl"),
    }
    save_encoder(encoder, out, card)
    write_model_card(out)
    result = TrainResult(
        out_dir=out,
        encoder_id=encoder.encoder_id,
        best_epoch=state.best_epoch,
        best_metrics=state.best_metrics,
        untrained_metrics=state.untrained,
        epochs_run=state.epoch,
        steps=state.step,
        stopped_early=state.stopped_early,
        seconds=round(time.monotonic() - started, 3),
    )
    log.info("exported %s (encoder %s): %s", out, encoder.encoder_id, brief(state.best_metrics))
    return result
