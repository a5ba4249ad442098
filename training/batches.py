"""What the trainer iterates over: P x K batches of augmented photos, or of cached tower features.

A batch source has ``epoch(sampler, epoch, start)``: that epoch's batches from batch ``start`` on, each the
same under resume and under any worker count (every augmentation is seeded by its place in the run).

- :class:`ImageBatches`: ``(pixel_values, image_grid_thw, labels)`` through a DataLoader (tower modes);
- :class:`FeatureBatches`: ``(features (P*K, hidden), labels)`` from :func:`cache_features` (head mode).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from PIL import Image

from training.augment import Augment, item_rng
from training.checkpoints import save_atomic
from training.data import PhotoDataset, load_image
from training.samplers import PKBatchSampler
from training.settings import TrainSettings
from training.trainable import use_autocast

if TYPE_CHECKING:
    from training.encoder import Encoder

# The "epoch" coordinate of head mode's cached views: apart from every real epoch's augmentation stream.
CACHE_STREAM = 2**31 - 1


class BatchSource(Protocol):
    """One epoch's batches, from batch ``start`` on (what :class:`training.trainer.Trainer` iterates)."""

    def epoch(self, sampler: PKBatchSampler, epoch: int, start: int) -> Iterable[tuple[torch.Tensor, ...]]: ...


def shrink(img: Image.Image, max_pixels: int) -> Image.Image:
    """Downscale (keeping the aspect) to at most ``max_pixels``; the tower sees far fewer pixels anyway."""
    w, h = img.size
    if w * h <= max_pixels:
        return img
    s = math.sqrt(max_pixels / (w * h))
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)


class AugmentedPhotos(torch.utils.data.Dataset):
    """Item ``(epoch, batch, position, index)`` -> (augmented image, label); the key seeds the augmentation.

    Keyed by position in the batch rather than by photo, so a photo repeated within a batch (a person with
    fewer than K photos) gets a different view each time.
    """

    def __init__(
        self, dataset: PhotoDataset, augment: Augment, seed: int, max_pixels: int, cache_pixels: int = 0
    ) -> None:
        self.dataset, self.augment, self.seed, self.max_pixels = dataset, augment, seed, max_pixels
        # Decoded, shrunk photos kept in memory (per worker) up to ``cache_pixels`` pixels in all: decoding
        # every photo at every step cost about as much CPU as the tiny tower's step (docs/training.md).
        self.cache_pixels = cache_pixels
        self._cache: dict[int, Image.Image] = {}
        self._cached_pixels = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def photo(self, index: int) -> Image.Image:
        """Photo ``index`` decoded and shrunk to ``max_pixels`` (from the cache when it is there)."""
        img = self._cache.get(index)
        if img is None:
            img = shrink(load_image(self.dataset.photos[index].path), self.max_pixels)
            n = img.size[0] * img.size[1]
            if self._cached_pixels + n <= self.cache_pixels:
                self._cache[index] = img
                self._cached_pixels += n
        return img

    def __getitem__(self, key: tuple[int, int, int, int]) -> tuple[Image.Image, int]:  # type: ignore[override]
        epoch, batch, position, index = key
        img = self.photo(index)
        # One stream per (epoch, batch, position): the same under resume and under any worker count.
        rng = item_rng(self.seed, epoch, batch, position)
        return self.augment(img, rng), int(self.dataset.labels[index])


class _KeyedBatches:
    """The sampler's batches of one epoch as keys for :class:`AugmentedPhotos`, from batch ``start`` on."""

    def __init__(self, sampler: PKBatchSampler, epoch: int, start: int) -> None:
        self.sampler, self.epoch, self.start = sampler, epoch, start

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        self.sampler.set_epoch(self.epoch)
        for b, batch in enumerate(self.sampler):
            if b >= self.start:
                yield [(self.epoch, b, pos, i) for pos, i in enumerate(batch)]


class _Collate:
    """Images -> the tower's inputs (runs in the DataLoader workers, so preprocessing overlaps training)."""

    def __init__(self, encoder: Encoder) -> None:
        self.preprocess = encoder.preprocess

    def __call__(self, items: list[tuple[Image.Image, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pixel_values, grid = self.preprocess([img for img, _ in items])
        return pixel_values, grid, torch.tensor([label for _, label in items], dtype=torch.int64)


class ImageBatches:
    """Tower modes: augmented photos through the encoder's preprocessing, in DataLoader workers."""

    def __init__(self, dataset: PhotoDataset, encoder: Encoder, settings: TrainSettings) -> None:
        self.photos = AugmentedPhotos(
            dataset,
            Augment(settings.augment),
            settings.seed,
            settings.work_pixels * settings.pixel_budget,
            cache_pixels=settings.cache_megapixels * 1_000_000,
        )
        self.collate = _Collate(encoder)
        self.workers = settings.workers

    def epoch(self, sampler: PKBatchSampler, epoch: int, start: int) -> Iterable[tuple[torch.Tensor, ...]]:
        return torch.utils.data.DataLoader(
            self.photos,
            batch_sampler=_KeyedBatches(sampler, epoch, start),
            collate_fn=self.collate,
            num_workers=self.workers,
            persistent_workers=False,
        )


class FeatureBatches:
    """Head mode: batches of cached views ``feats`` (n, V, hidden) with their ``labels`` (n,)."""

    def __init__(self, feats: torch.Tensor, labels: np.ndarray, seed: int) -> None:
        self.feats, self.labels, self.seed = feats, labels, seed

    def epoch(self, sampler: PKBatchSampler, epoch: int, start: int) -> Iterable[tuple[torch.Tensor, ...]]:
        return feature_batches(sampler, epoch, start, self.feats, self.labels, self.seed)


def feature_batches(
    sampler: PKBatchSampler, epoch: int, start: int, feats: torch.Tensor, labels: np.ndarray, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Head mode: (features (P*K, hidden), labels (P*K,)) per batch from batch ``start`` on.

    Each item is one of its photo's cached views ``feats`` (n, V, hidden), drawn from a stream seeded by
    (seed, epoch, batch), so a resumed epoch replays the same batches.
    """
    sampler.set_epoch(epoch)
    for b, batch in enumerate(sampler):
        if b < start:
            continue
        n_views = feats.shape[1]
        views = np.random.default_rng([seed, epoch, b, 1]).integers(0, n_views, size=len(batch))
        # A photo repeated in the batch (its person has fewer than K) takes its next view each time, so the
        # repeat is another augmentation rather than the identical feature vector.
        first: dict[int, tuple[int, int]] = {}  # photo -> (its first view, repeats so far)
        for j, i in enumerate(batch):
            if i in first:
                view, repeats = first[i]
                first[i] = (view, repeats + 1)
                views[j] = (view + repeats + 1) % n_views
            else:
                first[i] = (int(views[j]), 0)
        index = torch.as_tensor(batch)
        yield feats[index, torch.as_tensor(views)], torch.as_tensor(labels[batch])


@torch.no_grad()
def pool_images(encoder: Encoder, images: Sequence[Image.Image], autocast: bool) -> torch.Tensor:
    pixel_values, grid = encoder.preprocess(images)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        return encoder.pool(pixel_values, grid).float().cpu()


def cache_features(
    encoder: Encoder,
    train: PhotoDataset,
    val: PhotoDataset,
    settings: TrainSettings,
    cache: Path,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head mode: pooled features of ``cache_views`` augmented views per training photo ``(n, V, hidden)``
    and of each validation photo as is ``(m, hidden)``; float32 on CPU, saved in ``cache`` for a resume."""
    from tqdm import tqdm

    key = hashlib.blake2b(
        json.dumps(
            [
                encoder.encoder_id,
                settings.augment.model_dump(mode="json"),
                settings.cache_views,
                settings.seed,
                settings.work_pixels,
                [str(p.path) for p in train.photos],
                [str(p.path) for p in val.photos],
            ]
        ).encode(),
        digest_size=8,
    ).hexdigest()
    path = cache / f"features-{key}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu")
        return saved["train"], saved["val"]
    autocast = use_autocast(settings, encoder.device)
    augment = Augment(settings.augment)
    max_pixels = settings.work_pixels * settings.pixel_budget
    bs = settings.eval_batch_size
    encoder.eval()
    val_feats = torch.cat(
        [
            pool_images(encoder, [load_image(p.path) for p in val.photos[i : i + bs]], autocast)
            for i in range(0, len(val), bs)
        ]
    )
    train_feats: list[torch.Tensor] = []
    for i in tqdm(range(0, len(train), bs), desc="caching features", unit="batch", disable=not progress):
        photos = train.photos[i : i + bs]
        images = [shrink(load_image(p.path), max_pixels) for p in photos]
        views = [
            augment(img, item_rng(settings.seed, CACHE_STREAM, i + j, v))
            for v in range(settings.cache_views)
            for j, img in enumerate(images)
        ]
        feats = pool_images(encoder, views, autocast)  # (V * b, hidden), view-major
        train_feats.append(feats.view(settings.cache_views, len(photos), -1).transpose(0, 1))
    out = torch.cat(train_feats).contiguous(), val_feats
    save_atomic({"train": out[0], "val": out[1]}, path)
    return out
