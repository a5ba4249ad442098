"""Metric-learning losses as small composable parts, built on pytorch-metric-learning 2.x.

- :class:`BatchHardTripletLoss`: for each anchor, its hardest positive and hardest negative in the batch
  (online mining, Hermans et al. 2017), hinge with a margin, averaged over all anchors that have both.
- :class:`SupConLoss`: supervised contrastive / InfoNCE over cosine similarities with a temperature
  (Khosla et al. 2020); every other same-identity item is a positive, the rest negatives.
- :class:`ProxySoftmaxLoss`: one learned proxy vector per training identity, cross-entropy over cosine
  similarities to all proxies with a temperature (normalised softmax, Zhai & Wu 2019): every step sees every
  training identity as a negative, not only the batch's (docs/training.md: it transfers better to new people
  than SupCon with ~84 training identities);
- :class:`CombinedLoss`: a weighted sum of the above, reporting each part.

All take ``embeddings`` (B, D) float and ``labels`` (B,) int64 and return a scalar tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pytorch_metric_learning import distances, losses, miners, reducers

from engine.errors import InvalidInput

Distance = Literal["cosine", "euclidean"]


def _distance(kind: Distance) -> distances.BaseDistance:
    if kind == "cosine":
        # A similarity (higher = closer); pml flips comparisons for it, so the triplet hinge is
        # relu(sim(a, n) - sim(a, p) + margin) = relu(d(a, p) - d(a, n) + margin) with d = 1 - cos.
        return distances.CosineSimilarity()
    if kind == "euclidean":
        return distances.LpDistance(normalize_embeddings=True, p=2)
    raise InvalidInput(f"distance must be 'cosine' or 'euclidean', got {kind!r}")


class BatchHardTripletLoss(torch.nn.Module):
    """Batch-hard triplet loss with online mining.

    loss = mean over anchors a with a positive and a negative in the batch of
    ``relu(d(a, hardest p) - d(a, hardest n) + margin)``; embeddings are L2-normalised first.

    Args:
        margin: hinge margin, in units of the distance (cosine distance 1 - cos, or euclidean on the sphere).
        distance: ``"cosine"`` or ``"euclidean"``.
    """

    def __init__(self, margin: float = 0.2, distance: Distance = "cosine") -> None:
        super().__init__()
        if margin < 0:
            raise InvalidInput(f"triplet margin must be >= 0, got {margin}")
        self.margin = margin
        self.miner = miners.BatchHardMiner(distance=_distance(distance))
        # MeanReducer: the average over every mined anchor, zeros included (pml's default averages only the
        # non-zero ones, which inflates the loss as training succeeds).
        self.loss = losses.TripletMarginLoss(
            margin=margin, distance=_distance(distance), reducer=reducers.MeanReducer()
        )

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(anchors, hardest positives, hardest negatives), each (n_anchors,) indices into the batch."""
        return tuple(self.miner(embeddings, labels))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(embeddings, labels, self.mine(embeddings, labels))


class SupConLoss(torch.nn.Module):
    """Supervised contrastive (multi-positive InfoNCE) loss over cosine similarities.

    For each anchor i with positives P(i):
    ``-mean_{p in P(i)} log(exp(s_ip / t) / sum_{j != i} exp(s_ij / t))``,
    averaged over anchors that have a positive.

    Args:
        temperature: softmax temperature; 0.1 worked here (docs/FINDINGS: tiny tower, synthetic identities).
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise InvalidInput(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.loss = losses.SupConLoss(temperature=temperature)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(embeddings, labels)


class ProxySoftmaxLoss(torch.nn.Module):
    """Normalised-softmax proxy loss: ``cross_entropy(cos(e_i, proxy_c) / t over classes c, label_i)``.

    Args:
        n_classes: number of training identities (labels are ``0..n_classes-1``).
        dim: embedding dimension.
        temperature: softmax temperature over cosine similarities.
        seed: initialises the proxies without touching the caller's random stream.

    ``forward(embeddings (B, dim), labels (B,))`` -> scalar. The proxies are parameters: they train with the
    model (the training loop puts them in their own optimiser group) and are saved in checkpoints.

    Raises:
        InvalidInput: ``n_classes`` < 2, ``dim`` < 1 or ``temperature`` <= 0.
    """

    def __init__(self, n_classes: int, dim: int, temperature: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        if n_classes < 2 or dim < 1:
            raise InvalidInput(f"proxy loss needs n_classes >= 2 and dim >= 1, got {n_classes}, {dim}")
        if temperature <= 0:
            raise InvalidInput(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.proxies = torch.nn.Parameter(0.1 * torch.randn(n_classes, dim))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = torch.nn.functional.normalize(embeddings, dim=-1)
        proxies = torch.nn.functional.normalize(self.proxies, dim=-1).to(emb.dtype)
        return torch.nn.functional.cross_entropy(emb @ proxies.T / self.temperature, labels)


class CombinedLoss(torch.nn.Module):
    """Weighted sum of losses; ``last_parts`` holds each part's value of the latest call (for logging)."""

    def __init__(self, parts: Sequence[tuple[str, float, torch.nn.Module]]) -> None:
        super().__init__()
        if not parts:
            raise InvalidInput("at least one loss is needed")
        self.names = [name for name, _, _ in parts]
        self.weights = [float(w) for _, w, _ in parts]
        self.parts = torch.nn.ModuleList([loss for _, _, loss in parts])
        self.last_parts: dict[str, float] = {}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        total = embeddings.new_zeros(())
        values: dict[str, float] = {}
        for name, weight, loss in zip(self.names, self.weights, self.parts, strict=True):
            value = loss(embeddings, labels)
            values[name] = float(value.detach())
            total = total + weight * value
        self.last_parts = values
        return total


def build_loss(
    kinds: Sequence[str],
    *,
    margin: float = 0.2,
    temperature: float = 0.1,
    distance: Distance = "cosine",
    weights: Sequence[float] | None = None,
    n_classes: int = 0,
    dim: int = 0,
    seed: int = 0,
) -> CombinedLoss:
    """A :class:`CombinedLoss` from names (``"triplet"``, ``"supcon"``, ``"proxy"``), e.g.
    ``["proxy", "supcon"]``. ``"proxy"`` needs ``n_classes`` (training identities) and ``dim``.

    Raises:
        InvalidInput: an unknown name, a repeated one, weights of another length, or a proxy loss without
            ``n_classes`` / ``dim``.
    """
    weights = list(weights) if weights is not None else [1.0] * len(kinds)
    if len(weights) != len(kinds):
        raise InvalidInput(f"{len(kinds)} losses but {len(weights)} weights")
    if len(set(kinds)) != len(kinds):
        raise InvalidInput(f"a loss is named twice: {list(kinds)}")
    parts: list[tuple[str, float, torch.nn.Module]] = []
    for kind, weight in zip(kinds, weights, strict=True):
        if kind == "triplet":
            parts.append((kind, weight, BatchHardTripletLoss(margin=margin, distance=distance)))
        elif kind == "supcon":
            parts.append((kind, weight, SupConLoss(temperature=temperature)))
        elif kind == "proxy":
            parts.append((kind, weight, ProxySoftmaxLoss(n_classes, dim, temperature=temperature, seed=seed)))
        else:
            raise InvalidInput(f"unknown loss {kind!r}; choose from 'triplet', 'supcon', 'proxy'")
    return CombinedLoss(parts)
