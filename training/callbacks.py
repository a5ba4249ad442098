"""What happens around the training loop, as callbacks (the shape of sentence-transformers' and HF's).

The :class:`training.trainer.Trainer` calls every hook of every callback in order; each hook gets the
trainer (its ``model``, ``optimizer``, ``scheduler``, ``state``, ``settings``). A callback that stops the run
sets ``trainer.state.finished``.

- :class:`MetricsLog`: one JSON line per evaluation in ``metrics.jsonl`` (epoch 0 = untrained);
- :class:`Checkpointing`: ``best.pt`` on every improvement, ``last.pt`` (the resume point) at each epoch's
  end, every ``every`` steps and on an interruption; restores the best weights when training ends;
- :class:`EarlyStopping`: stops after ``patience`` evaluations without a better monitored metric;
- :class:`ProgressBar`: a tqdm bar per epoch with the running loss and the epoch's metrics.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from training.checkpoints import load_trainable_state, read_checkpoint, save_atomic

if TYPE_CHECKING:
    from tqdm import tqdm

    from training.trainer import Trainer

log = logging.getLogger(__name__)


class TrainerCallback:
    """Hooks of a run, each a no-op here; subclasses override what they need."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the untrained evaluation (or, resuming, before the first batch)."""

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        """Before epoch ``epoch`` (0-based) runs, from batch ``trainer.state.batch``."""

    def on_batch_end(self, trainer: Trainer, loss: float) -> None:
        """After one batch's backward pass (``loss``: its value)."""

    def on_step_end(self, trainer: Trainer) -> None:
        """After an optimiser step (``trainer.state.step`` counts them)."""

    def on_evaluate(self, trainer: Trainer, epoch: int, metrics: dict[str, float], improved: bool) -> None:
        """After validation of epoch ``epoch`` (1-based; 0 = untrained); ``improved``: a new best."""

    def on_log(self, trainer: Trainer, entry: dict[str, Any]) -> None:
        """One record of the run (epoch, step, loss, learning rates, seconds, validation metrics)."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        """After an epoch was evaluated and logged (``trainer.state.epoch`` already points at the next)."""

    def on_interrupt(self, trainer: Trainer) -> None:
        """The run is about to stop before its end (a step limit or Ctrl-C); the state is consistent."""

    def on_train_end(self, trainer: Trainer, completed: bool) -> None:
        """Always called last; ``completed``: the run finished (all epochs, or stopped early)."""


class MetricsLog(TrainerCallback):
    """Appends each :meth:`on_log` entry to ``path`` as one JSON line (flushed, so a crash keeps it)."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = Path(path)
        if fresh and self.path.exists():
            self.path.unlink()  # a fresh run: the old log would mix two runs
        self._file: IO[str] | None = None

    def on_train_begin(self, trainer: Trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def on_log(self, trainer: Trainer, entry: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(entry, sort_keys=True) + "\n")
            self._file.flush()

    def on_train_end(self, trainer: Trainer, completed: bool) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Checkpointing(TrainerCallback):
    """Resume points in ``folder``: ``best.pt`` (the best evaluation so far) and ``last.pt``.

    Args:
        every: also write ``last.pt`` every N optimiser steps (0 = only at epoch ends and interruptions).
        restore_best: load ``best.pt``'s weights into the model when the run completes (what is exported).
    """

    def __init__(self, folder: Path, every: int = 0, restore_best: bool = True) -> None:
        self.best_path, self.last_path = Path(folder) / "best.pt", Path(folder) / "last.pt"
        self.every, self.restore_best = every, restore_best

    def on_evaluate(self, trainer: Trainer, epoch: int, metrics: dict[str, float], improved: bool) -> None:
        if improved:
            save_atomic(trainer.checkpoint(), self.best_path)

    def on_step_end(self, trainer: Trainer) -> None:
        if self.every and trainer.state.step % self.every == 0:
            save_atomic(trainer.checkpoint(), self.last_path)

    def on_epoch_end(self, trainer: Trainer) -> None:
        save_atomic(trainer.checkpoint(), self.last_path)

    def on_interrupt(self, trainer: Trainer) -> None:
        save_atomic(trainer.checkpoint(), self.last_path)

    def on_train_end(self, trainer: Trainer, completed: bool) -> None:
        if not completed:
            return
        save_atomic(trainer.checkpoint(), self.last_path)
        if self.restore_best and self.best_path.is_file():
            load_trainable_state(trainer.model, read_checkpoint(self.best_path)["model"])


class EarlyStopping(TrainerCallback):
    """Stops the run after ``patience`` evaluations in a row without a new best of the monitored metric.

    The count lives in ``trainer.state.bad_epochs``, so it survives a resume. The untrained evaluation
    (epoch 0) sets the first best but is not counted, nor are epochs that cannot become the best
    (``TrainSettings.select_from``).
    """

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience = patience

    def on_evaluate(self, trainer: Trainer, epoch: int, metrics: dict[str, float], improved: bool) -> None:
        if epoch == 0 or not trainer.selectable(epoch):
            return
        state = trainer.state
        state.bad_epochs = 0 if improved else state.bad_epochs + 1
        if state.bad_epochs >= self.patience:
            log.info("no better %s for %d epochs: stopping early", trainer.monitor, self.patience)
            state.finished = state.stopped_early = True


class ProgressBar(TrainerCallback):
    """A tqdm bar per epoch: batches done, the running loss, then the epoch's loss, recall@1 and MAP@R."""

    def __init__(self) -> None:
        self._bar: tqdm[Any] | None = None

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=trainer.batches_per_epoch,
            initial=trainer.state.batch,
            unit="batch",
            desc=f"epoch {epoch + 1}/{trainer.settings.epochs}",
        )

    def on_batch_end(self, trainer: Trainer, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.4f}")

    def on_evaluate(self, trainer: Trainer, epoch: int, metrics: dict[str, float], improved: bool) -> None:
        if self._bar is not None:
            s = trainer.state
            self._bar.set_postfix(
                loss=f"{s.loss_sum / max(1, s.loss_batches):.4f}",
                r1=f"{metrics.get('recall@1', float('nan')):.3f}",
                map_r=f"{metrics.get('map@r', float('nan')):.3f}",
            )
            self._bar.close()
            self._bar = None

    def on_train_end(self, trainer: Trainer, completed: bool) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
