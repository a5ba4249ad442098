"""Validation during training: embed the held-out identities and score retrieval on them.

An evaluator is any callable ``(encoder) -> {metric: value}``; the trainer keeps the epoch with the highest
``map@r`` (its ``monitor``). Two ship here: one that embeds the validation photos through the encoder's own
``embed`` (what serving does), and head mode's, which runs the head over cached tower features.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from training.data import Photo, load_image

if TYPE_CHECKING:
    from training.encoder import Encoder


class Evaluator(Protocol):
    """``(encoder) -> metrics`` (floats keyed by name; must hold the trainer's monitored metric)."""

    def __call__(self, encoder: Encoder) -> dict[str, float]: ...


def retrieval_scores(emb: np.ndarray, labels: Sequence[int] | np.ndarray) -> dict[str, float]:
    """recall@1/5, MAP@R and mean same/other-person cosine distance of ``emb`` (n, d), L2-normalised."""
    from training.metrics import retrieval_metrics, scalar_metrics

    metrics = scalar_metrics(retrieval_metrics(emb, labels, ks=(1, 5)))
    return {k: (v if isinstance(v, int) else float(v)) for k, v in metrics.items()}


class PhotoEvaluator:
    """Embeds ``photos`` (full-size files, eval mode) through the encoder's own preprocessing and forward (what
    ``encoder.embed`` does, chunk by chunk) and scores them by ``labels``.

    Preprocessing does not depend on the weights, so its output is computed once and kept (up to
    ``cache_bytes`` of ``pixel_values``; keyed by ``encoder.preprocessing_settings()``, so a change of
    preprocessing recomputes it): decoding every validation photo at every epoch cost the demo's
    80-epoch run a large share of its CPU (docs/training.md, round 4). The vectors are the same as
    ``encoder.embed(images, batch_size)`` gives.
    """

    def __init__(
        self, photos: Sequence[Photo], labels: np.ndarray, batch_size: int = 32, cache_bytes: int = 256 * 2**20
    ) -> None:
        self.photos, self.labels, self.batch_size = list(photos), labels, batch_size
        self.cache_bytes = cache_bytes
        self._key: str | None = None
        self._inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def inputs(self, encoder: Encoder) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(pixel_values, image_grid_thw)`` per chunk of ``batch_size`` photos (from the cache when valid)."""
        key = json.dumps(encoder.preprocessing_settings(), sort_keys=True)
        if key == self._key:
            yield from self._inputs
            return
        self._key, self._inputs = None, []
        kept, size = [], 0
        bs = self.batch_size
        for i in range(0, len(self.photos), bs):
            pixel_values, grid = encoder.preprocess([load_image(p.path) for p in self.photos[i : i + bs]])
            size += pixel_values.numel() * pixel_values.element_size()
            if size <= self.cache_bytes:
                kept.append((pixel_values, grid))
            yield pixel_values, grid
        if size <= self.cache_bytes:
            self._key, self._inputs = key, kept

    def __call__(self, encoder: Encoder) -> dict[str, float]:
        encoder.eval()
        with torch.inference_mode():
            chunks = [encoder(pv, grid).float().cpu().numpy() for pv, grid in self.inputs(encoder)]
        return retrieval_scores(np.concatenate(chunks), self.labels)


class FeatureEvaluator:
    """Head mode: the head over cached validation features ``feats`` (m, hidden), scored by ``labels``."""

    def __init__(self, feats: torch.Tensor, labels: np.ndarray) -> None:
        self.feats, self.labels = feats, labels

    def __call__(self, encoder: Encoder) -> dict[str, float]:
        encoder.eval()
        with torch.no_grad():
            emb = F.normalize(encoder.head(self.feats.to(encoder.device)), dim=-1).cpu().numpy()
        return retrieval_scores(emb, self.labels)


def brief(metrics: dict[str, Any]) -> str:
    """One log line's worth of metrics."""
    keys = ("recall@1", "recall@5", "map@r", "mean_same_dist", "mean_diff_dist")
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics)
