"""The Trainer handed its parts: a scripted evaluator drives early stopping, checkpointing and the log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.batches import FeatureBatches
from training.callbacks import Checkpointing, EarlyStopping, MetricsLog, TrainerCallback
from training.checkpoints import read_checkpoint
from training.losses import build_loss
from training.samplers import PKBatchSampler
from training.settings import TrainSettings
from training.trainable import build_model
from training.trainer import Trainer


class Scripted:
    """An evaluator that returns the next MAP@R of a script (epoch 0 first) and records the head it saw."""

    def __init__(self, maps: list[float]) -> None:
        self.maps, self.calls, self.heads = maps, 0, []

    def __call__(self, encoder) -> dict[str, float]:  # type: ignore[no-untyped-def]
        value = self.maps[self.calls]
        self.calls += 1
        self.heads.append(encoder.head.proj.weight.detach().clone())
        return {"map@r": value, "recall@1": value}


class Counter(TrainerCallback):
    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.steps = 0
        self.completed: bool | None = None

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        self.epochs.append(epoch)

    def on_step_end(self, trainer: Trainer) -> None:
        self.steps += 1

    def on_train_end(self, trainer: Trainer, completed: bool) -> None:
        self.completed = completed


def _trainer(
    tiny_checkpoint: Path, tmp_path: Path, maps: list[float], patience: int, epochs: int = 8, select_from: float = 0.0
):
    settings = TrainSettings(
        mode="head", dim=16, pixel_budget=64 * 64, p=4, k=2, epochs=epochs, patience=patience, select_from=select_from
    )
    encoder, groups = build_model(str(tiny_checkpoint), settings)
    labels = np.repeat(np.arange(8), 2)
    feats = torch.randn(
        len(labels), 2, int(encoder.tower.config.out_hidden_size), generator=torch.Generator().manual_seed(0)
    )
    sampler = PKBatchSampler(labels, p=4, k=2, seed=0)
    evaluator, counter = Scripted(maps), Counter()
    trainer = Trainer(
        encoder,
        settings,
        param_groups=groups,
        sampler=sampler,
        batches=FeatureBatches(feats, labels, seed=0),
        loss=build_loss(["supcon"]),
        evaluator=evaluator,
        callbacks=[
            MetricsLog(tmp_path / "metrics.jsonl", fresh=True),
            EarlyStopping(patience),
            Checkpointing(tmp_path / "ckpt"),
            counter,
        ],
    )
    return trainer, evaluator, counter


def test_early_stopping_stops_after_patience_epochs_without_a_better_map(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # untrained 0.10; epoch 1 0.20 (best), 2: 0.15, 3: 0.19 -> two epochs without a new best.
    trainer, evaluator, counter = _trainer(tiny_checkpoint, tmp_path, [0.10, 0.20, 0.15, 0.19, 0.5, 0.6], patience=2)
    state = trainer.train()
    assert state.stopped_early and state.finished
    assert state.epoch == 3 and evaluator.calls == 4  # epoch 0 + three epochs; epoch 4 never ran
    assert counter.epochs == [0, 1, 2] and counter.steps == 3 * 2 and counter.completed is True
    assert state.best_epoch == 1 and state.best_map == pytest.approx(0.20)
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1, 2, 3] and [e.get("best") for e in log] == [None, True, False, False]
    # The model ends on epoch 1's weights (what the evaluator saw after epoch 1), not the last epoch's.
    assert torch.equal(trainer.model.head.proj.weight.detach(), evaluator.heads[1])
    assert not torch.equal(evaluator.heads[1], evaluator.heads[3])
    assert read_checkpoint(tmp_path / "ckpt" / "last.pt")["state"]["stopped_early"] is True


def test_patience_is_reset_by_a_new_best(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # 0.2, 0.1 (bad 1), 0.3 (best, reset), 0.25 (bad 1), 0.26 (bad 2 -> stop at epoch 5)
    trainer, _, _ = _trainer(tiny_checkpoint, tmp_path, [0.0, 0.2, 0.1, 0.3, 0.25, 0.26, 0.9], patience=2)
    state = trainer.train()
    assert (state.epoch, state.best_epoch, state.stopped_early) == (5, 3, True)


def test_without_improvement_over_the_untrained_model_the_untrained_weights_are_kept(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    trainer, evaluator, _ = _trainer(tiny_checkpoint, tmp_path, [0.5, 0.1, 0.2, 0.3], patience=5, epochs=3)
    state = trainer.train()
    assert not state.stopped_early and state.epoch == 3 and state.best_epoch == 0
    assert torch.equal(trainer.model.head.proj.weight.detach(), evaluator.heads[0])


def test_epochs_before_select_from_cannot_become_the_best_nor_use_up_patience(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # 6 epochs, select_from 0.5: epochs 1-2 are scored but not selectable; epoch 2's 0.9 is a noise peak.
    maps = [0.1, 0.3, 0.9, 0.2, 0.4, 0.35, 0.3]
    trainer, evaluator, _ = _trainer(tiny_checkpoint, tmp_path, maps, patience=2, epochs=6, select_from=0.5)
    state = trainer.train()
    assert state.best_epoch == 4 and state.best_map == pytest.approx(0.4)
    # Epochs 1-2 did not use up patience 2 (the run went on); epochs 5, 6 did, at the last epoch.
    assert state.stopped_early is True and state.epoch == 6
    assert torch.equal(trainer.model.head.proj.weight.detach(), evaluator.heads[4])
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e.get("best") for e in log] == [None, False, False, True, True, False, False]
    # Without it the peak wins.
    plain, _, _ = _trainer(tiny_checkpoint, tmp_path / "plain", maps, patience=2, epochs=6)
    assert plain.train().best_epoch == 2


def test_a_missing_monitored_metric_is_an_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    trainer, _, counter = _trainer(tiny_checkpoint, tmp_path, [0.1], patience=2)
    trainer.evaluator = lambda encoder: {"recall@1": 0.5}
    with pytest.raises(KeyError, match="map@r"):
        trainer.train()
    assert counter.completed is False
