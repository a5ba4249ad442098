"""The training loop, handed its parts: ``Trainer(model, settings, sampler, batches, loss, evaluator, callbacks)``.

As sentence-transformers' trainer is: the loop only runs batches, steps the optimiser and evaluates;
logging, checkpointing, early stopping and the progress bar are callbacks (:mod:`training.callbacks`).
:func:`training.loop.train` wires the parts for a run from folders of photos.

One run: evaluate the untrained model (epoch 0, the first best), then per epoch: the sampler's batches
through ``loss`` (with gradient accumulation, clipping, AdamW and a warm-up + cosine schedule), evaluation,
a new best when the monitored metric rises. Every batch and augmentation is seeded by its place in the run,
so a run resumed from :meth:`Trainer.checkpoint` ends with the same weights as one never interrupted.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from training.batches import BatchSource
from training.callbacks import TrainerCallback
from training.checkpoints import CHECKPOINT_FORMAT, TrainState, load_trainable_state, trainable_state
from training.evaluator import Evaluator, brief
from training.samplers import PKBatchSampler
from training.settings import TrainSettings
from training.trainable import batch_loss, use_autocast, warmup_cosine

if TYPE_CHECKING:
    from training.encoder import Encoder
    from training.losses import CombinedLoss

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Raised by a run stopped by ``stop_after_steps`` (after the callbacks saved its resume point)."""


class Trainer:
    """Trains ``model`` on ``batches`` drawn by ``sampler``, scored by ``evaluator`` after every epoch.

    Args:
        model: the encoder; what trains is what ``param_groups`` holds (see :func:`training.trainable.build_model`).
        settings: epochs, accumulation, clipping, weight decay, warm-up, seed.
        param_groups: the optimiser's parameter groups (each with its ``lr``).
        sampler: P x K batches of dataset indices; ``len(sampler)`` batches per epoch.
        batches: turns the sampler's indices into model inputs (:class:`training.batches.BatchSource`).
        loss: ``(embeddings (B, D), labels (B,)) -> scalar``; a ``last_parts`` dict is logged when present.
        evaluator: ``(model) -> metrics``, holding ``monitor``.
        callbacks: called in order at every hook.
        monitor: the metric that picks the best epoch (higher is better).
    """

    def __init__(
        self,
        model: Encoder,
        settings: TrainSettings,
        *,
        param_groups: list[dict[str, Any]],
        sampler: PKBatchSampler,
        batches: BatchSource,
        loss: CombinedLoss | torch.nn.Module,
        evaluator: Evaluator,
        callbacks: Sequence[TrainerCallback] = (),
        monitor: str = "map@r",
    ) -> None:
        self.model, self.settings, self.param_groups = model, settings, param_groups
        self.sampler, self.batches, self.loss, self.evaluator = sampler, batches, loss, evaluator
        self.callbacks, self.monitor = list(callbacks), monitor
        self.batches_per_epoch = len(sampler)
        steps_per_epoch = math.ceil(self.batches_per_epoch / settings.grad_accum)
        self.optimizer = torch.optim.AdamW(param_groups, weight_decay=settings.weight_decay)
        # The schedule is fixed by the epochs asked for; extending a run on resume stretches its tail.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(steps_per_epoch * settings.epochs, settings.warmup_fraction)
        )
        self.autocast = use_autocast(settings, model.device)
        self.state = TrainState()

    # -- resume points ------------------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """Everything a resume needs: trainable weights, optimiser, schedule, torch RNG, state."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": trainable_state(self.model),
            "loss": self.loss.state_dict(),  # a proxy loss's proxies; empty for the others
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "state": dict(self.state.__dict__),
        }

    def load_checkpoint(self, ckpt: dict[str, Any]) -> None:
        """Continue from a :meth:`checkpoint` (as read by :func:`training.checkpoints.read_checkpoint`)."""
        load_trainable_state(self.model, ckpt["model"])
        if ckpt.get("loss"):
            self.loss.load_state_dict(ckpt["loss"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.state = TrainState(**ckpt["state"])

    # -- the loop -----------------------------------------------------------------------------------------
    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def selectable(self, epoch: int) -> bool:
        """Whether ``epoch``'s evaluation may become the best (``settings.select_from``; epoch 0 always)."""
        return epoch == 0 or epoch >= math.ceil(self.settings.select_from * self.settings.epochs)

    def _evaluate(self, epoch: int) -> tuple[dict[str, float], bool]:
        metrics = self.evaluator(self.model)
        if self.monitor not in metrics:
            raise KeyError(f"the evaluator returned no {self.monitor!r} (got {sorted(metrics)})")
        improved = self.selectable(epoch) and metrics[self.monitor] > self.state.best_map
        if improved:
            self.state.best_map, self.state.best_epoch = metrics[self.monitor], epoch
            self.state.best_metrics = dict(metrics)
        self._call("on_evaluate", epoch, metrics, improved)
        return metrics, improved

    def train(self, stop_after_steps: int | None = None) -> TrainState:
        """Run (or continue) the training; returns the final state. The model ends on the best weights when
        a :class:`training.callbacks.Checkpointing` callback restores them.

        Raises:
            Interrupted: ``stop_after_steps`` optimiser steps of this call were done.
        """
        state, settings = self.state, self.settings
        completed = False
        micro, pending = 0, 0.0  # batches (and their loss) accumulated since the last optimiser step
        self._call("on_train_begin")
        try:
            if not state.untrained:
                state.untrained, _ = self._evaluate(0)  # the untrained weights: the first candidate
                self._call("on_log", {"epoch": 0, "step": 0, "val": state.untrained})
                log.info("untrained: %s", brief(state.untrained))
            steps_this_call = 0
            while state.epoch < settings.epochs and not state.finished:
                epoch, epoch_start = state.epoch, time.monotonic()
                self.model.train()
                if settings.mode in ("head", "lora"):
                    self.model.tower.eval()  # frozen base: no dropout noise in the features
                if state.batch == 0:
                    state.loss_sum, state.loss_batches = 0.0, 0
                self._call("on_epoch_begin", epoch)
                self.optimizer.zero_grad(set_to_none=True)
                micro, pending = 0, 0.0
                for batch in self.batches.epoch(self.sampler, epoch, state.batch):
                    value = self._backward(batch)
                    micro, pending = micro + 1, pending + value
                    self._call("on_batch_end", value)
                    if micro % settings.grad_accum == 0 or state.batch == self.batches_per_epoch:
                        self._step()
                        micro, pending = 0, 0.0
                        steps_this_call += 1
                        self._call("on_step_end")
                        if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                            self._call("on_interrupt")
                            raise Interrupted(f"stopped after {steps_this_call} steps at step {state.step}")
                val, improved = self._evaluate(epoch + 1)
                train_loss = state.loss_sum / max(1, state.loss_batches)
                self._call(
                    "on_log",
                    {
                        "epoch": epoch + 1,
                        "step": state.step,
                        "train_loss": train_loss,
                        "loss_parts": getattr(self.loss, "last_parts", {}),
                        "lr": [g["lr"] for g in self.optimizer.param_groups],
                        "seconds": round(time.monotonic() - epoch_start, 3),
                        "val": val,
                        "best": improved,
                    },
                )
                log.info(
                    "epoch %d/%d: loss %.4f, %s%s",
                    epoch + 1,
                    settings.epochs,
                    train_loss,
                    brief(val),
                    " (best)" if improved else "",
                )
                state.epoch, state.batch = epoch + 1, 0
                self._call("on_epoch_end")
            state.finished = completed = True
        except KeyboardInterrupt:
            # Keep a resume point at the last optimiser step (batches accumulated since are redone on resume).
            state.batch -= micro
            state.loss_sum -= pending
            state.loss_batches -= micro
            self._call("on_interrupt")
            raise
        finally:
            self._call("on_train_end", completed)
        self.model.eval()
        return state

    def _backward(self, batch: tuple[torch.Tensor, ...]) -> float:
        loss = batch_loss(self.model, batch, self.loss, autocast=self.autocast)
        (loss / self.settings.grad_accum).backward()
        value = float(loss.detach())
        self.state.batch += 1
        self.state.loss_sum += value
        self.state.loss_batches += 1
        return value

    def _step(self) -> None:
        if self.settings.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.param_groups for p in g["params"]], self.settings.clip_grad_norm
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
