"""Training batches augmented as tensors: each photo decoded and face-cropped once, then moved and relit in torch.

The Pillow path (:class:`training.batches.ImageBatches`) augments the whole decoded photo and runs Qwen's
image processor on every view at every step; for the demo's tiny tower that data work cost about as much CPU
as the tower's own step (docs/training.md, round 4). This path, chosen by ``TrainSettings.augment_backend =
"tensor"`` (tower modes with ``face_crop > 0``), does what ``bench/train_probe.py`` measured:

1. once per photo: ``to_rgb`` (via ``load_image``), the same face square serving crops
   (:func:`training.model.face_crop_box`), widened by :data:`CONTEXT` around its centre (edge pixels repeat
   where it leaves the photo), resized with Pillow's bicubic filter to a ``(3, R, R)`` uint8 tensor;
2. per batch: one affine resampling (``grid_sample``) per view to the processor's square side: scale
   ``exp(U(-scale_jitter, scale_jitter))``, shift ``U(-shift, shift)`` of the face side, rotation, flip;
   then saturation, contrast (about mid-grey), brightness x per-channel gain, a light ramp, clipped to 0..1;
3. Qwen's normalisation (the processor's ``image_mean`` / ``image_std``), its patch layout
   (:func:`patchify`, equal to the processor's for the same pixels, tested) and, when the encoder has it,
   the same :func:`training.model.standardise_channels` serving applies.

With every augmentation off a view is the face square resampled from the cached context crop: the pixels
serving computes for the same photo up to resampling (bilinear from the cached crop here, one bicubic
resize there; measured in tests/training/test_tensor_augment.py). Serving's preprocessing is untouched.

Per-batch random draws come from ``(seed, epoch, batch)`` alone, so a resumed run replays the same views.
Hue shifts and JPEG re-compression are not implemented here (the settings validator refuses them).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.errors import InvalidInput
from training.augment import AugmentSettings
from training.data import PhotoDataset, load_image
from training.model import VIGNETTE_GREY, face_crop_box, vignette_weights
from training.samplers import PKBatchSampler
from training.settings import TrainSettings

if TYPE_CHECKING:
    from training.encoder import Encoder

log = logging.getLogger(__name__)

# The cached square is this many times the face square's side: room to zoom out, shift and rotate.
CONTEXT = 1.25
# ... and is stored at this many times the output side (so a 0.85x zoom still samples >= 1 stored pixel
# per output pixel).
OVERSAMPLE = 1.5


def square_side(encoder: Encoder) -> int:
    """Side in pixels of a square image after Qwen's ``smart_resize`` at the encoder's pixel budget, for a
    photo larger than that (the demo's and profile photos' case): the largest multiple of patch x merge whose
    square fits the budget."""
    factor = int(encoder.processor.patch_size) * int(encoder.processor.merge_size)
    return max(factor, int(math.isqrt(encoder.pixel_budget) // factor) * factor)


def context_crop(img: Image.Image, face_crop: float, res: int) -> torch.Tensor:
    """The face square of ``img`` (as serving crops it) widened by :data:`CONTEXT`: ``(3, res, res)`` uint8.

    Where the wider square leaves the photo, the edge pixels repeat (no black borders the model could key on).
    """
    left, top, right, bottom = face_crop_box(img.size, face_crop)
    side = (right - left) * CONTEXT
    cx, cy = (left + right) / 2, (top + bottom) / 2
    w, h = img.size
    x0, y0 = int(math.floor(cx - side / 2)), int(math.floor(cy - side / 2))
    n = int(math.ceil(side))
    arr = np.asarray(img.convert("RGB"))
    xs, ys = np.clip(np.arange(x0, x0 + n), 0, w - 1), np.clip(np.arange(y0, y0 + n), 0, h - 1)
    square = Image.fromarray(np.ascontiguousarray(arr[ys[:, None], xs[None, :]]))
    square = square.resize((res, res), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(square, dtype=np.uint8).copy()).permute(2, 0, 1)


def augment_views(
    x: torch.Tensor, rng: np.random.Generator, side: int, settings: AugmentSettings | None
) -> torch.Tensor:
    """Cached context crops ``x`` (n, 3, R, R) uint8 -> views (n, 3, side, side) float32 in 0..1.

    ``settings`` None: no augmentation (the face square itself). Draws every random number from ``rng``.
    """
    n = x.shape[0]
    xf = x.float().div_(255.0)
    s = settings

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return torch.from_numpy(rng.uniform(lo, hi, size=shape or (n,)).astype(np.float32))

    scale = torch.full((n,), 1.0 / CONTEXT)
    angle, flip, tx, ty = torch.zeros(n), torch.ones(n), torch.zeros(n), torch.zeros(n)
    if s is not None:
        scale = scale * torch.exp(u(-s.scale_jitter, s.scale_jitter))
        angle = torch.deg2rad(u(-s.rotation_deg, s.rotation_deg))
        flip = torch.where(u(0.0, 1.0) < s.flip_p, -1.0, 1.0)
        # grid_sample's coordinates span the cached square as -1..1: one face side is 2 / CONTEXT of them.
        tx, ty = (u(-s.shift, s.shift) * (2.0 / CONTEXT) for _ in range(2))
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], -1), torch.stack([sin * flip, cos, ty], -1)], 1)
    grid = F.affine_grid(theta, [n, 3, side, side], align_corners=False)
    y = F.grid_sample(xf, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if s is None:
        return y
    if s.saturation > 0:
        grey = (y * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        sat = u(1 - s.saturation, 1 + s.saturation).view(n, 1, 1, 1)
        y = grey + (y - grey) * sat
    if s.contrast > 0:
        y = (y - 0.5) * u(1 - s.contrast, 1 + s.contrast).view(n, 1, 1, 1) + 0.5
    gain = u(1 - s.brightness, 1 + s.brightness).view(n, 1) if s.brightness > 0 else torch.ones(n, 1)
    if s.channel_gain > 0:
        gain = gain * u(1 - s.channel_gain, 1 + s.channel_gain, n, 3)
    y = y * gain.expand(n, 3).reshape(n, 3, 1, 1)
    if s.light_ramp > 0:  # light from one side: +-depth/2 of full scale across the image, as the Pillow path
        direction, depth = u(0.0, 2 * math.pi), u(0.0, s.light_ramp)
        lin = torch.linspace(-0.5, 0.5, side)
        ramp = torch.cos(direction).view(n, 1, 1) * lin.view(1, 1, -1) + torch.sin(direction).view(n, 1, 1) * lin.view(
            1, -1, 1
        )
        y = y + (depth.view(n, 1, 1) * ramp).unsqueeze(1)
    return y.clamp_(0.0, 1.0)


def patchify(y: torch.Tensor, patch: int, merge: int, temporal: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images ``y`` (n, C, H, W) -> Qwen's processor layout: ``pixel_values`` (n*gh*gw, C*T*P*P)
    and ``image_grid_thw`` (n, 3); each image repeated ``temporal`` times, as the processor does for a still.

    Raises:
        InvalidInput: H or W not a multiple of patch x merge.
    """
    n, c, hh, ww = y.shape
    if hh % (patch * merge) or ww % (patch * merge):
        raise InvalidInput(f"image {hh}x{ww} is not a multiple of patch {patch} x merge {merge}")
    gh, gw = hh // patch, ww // patch
    p = y.reshape(n, c, gh // merge, merge, patch, gw // merge, merge, patch)
    p = p.permute(0, 2, 5, 3, 6, 1, 4, 7)  # n, gh/m, gw/m, m, m, C, P, P
    p = p.unsqueeze(6).expand(*p.shape[:6], temporal, patch, patch)
    flat = p.reshape(n * gh * gw, c * temporal * patch * patch).contiguous()
    grid = torch.tensor([[1, gh, gw]] * n, dtype=torch.int64)
    return flat, grid


def to_tower_inputs(y: torch.Tensor, encoder: Encoder) -> tuple[torch.Tensor, torch.Tensor]:
    """Views ``y`` (n, 3, S, S) in 0..1 -> ``(pixel_values, image_grid_thw)`` as ``Encoder.preprocess`` gives
    for images of those pixels: the encoder's vignette, the processor's normalisation and layout, then the
    encoder's standardisation."""
    if encoder.vignette > 0:  # as Encoder.preprocess does to the face square, before Qwen's normalisation
        w = vignette_weights(y.shape[-2], y.shape[-1], encoder.vignette)
        y = y * w + VIGNETTE_GREY * (1.0 - w)
    proc = encoder.processor
    mean = torch.tensor([float(v) for v in proc.image_mean]).view(1, 3, 1, 1)
    std = torch.tensor([float(v) for v in proc.image_std]).view(1, 3, 1, 1)
    pixel_values, grid = patchify(
        (y - mean) / std, int(proc.patch_size), int(proc.merge_size), int(proc.temporal_patch_size)
    )
    if encoder.standardise:
        pixel_values = standardise_square(pixel_values, len(y))
    return pixel_values, grid


def standardise_square(pixel_values: torch.Tensor, n: int, channels: int = 3) -> torch.Tensor:
    """:func:`training.model.standardise_channels` for ``n`` images of one grid size, in one pass (the same
    statistics over the same rows; equal up to float rounding, tested)."""
    x = pixel_values.reshape(n, -1, channels, pixel_values.shape[1] // channels)
    mean = x.mean(dim=(1, 3), keepdim=True)
    std = x.std(dim=(1, 3), keepdim=True).clamp_min(0.04)
    return (0.5 * (x - mean) / std).reshape(pixel_values.shape)


class TensorBatches:
    """Tower modes, ``augment_backend="tensor"``: ``(pixel_values, image_grid_thw, labels)`` per P x K batch.

    Context crops are built on first use and kept up to ``cache_megapixels`` (beyond that, rebuilt per use).
    Runs in the calling process (``workers`` does not apply): the per-batch work is a few tensor operations.

    Raises:
        InvalidInput: the encoder has no face crop (views must be squares of one size).
    """

    def __init__(self, dataset: PhotoDataset, encoder: Encoder, settings: TrainSettings) -> None:
        if encoder.face_crop <= 0:
            raise InvalidInput("augment_backend 'tensor' needs face_crop > 0 (square views of one size)")
        self.dataset, self.encoder, self.settings = dataset, encoder, settings
        self.side = square_side(encoder)
        self.res = int(round(self.side * CONTEXT * OVERSAMPLE))
        self.capacity = settings.cache_megapixels * 1_000_000 // (self.res * self.res)
        self._crops: dict[int, torch.Tensor] = {}

    def crop(self, index: int) -> torch.Tensor:
        """Photo ``index``'s context crop ``(3, R, R)`` uint8 (cached)."""
        found = self._crops.get(index)
        if found is not None:
            return found
        img = load_image(self.dataset.photos[index].path)
        out = context_crop(img, self.encoder.face_crop, self.res)
        if len(self._crops) < self.capacity:
            self._crops[index] = out
        return out

    def views(self, indices: list[int], epoch: int, batch: int) -> torch.Tensor:
        """The augmented views ``(n, 3, side, side)`` in 0..1 of batch ``batch`` of ``epoch``."""
        x = torch.stack([self.crop(i) for i in indices])
        rng = np.random.default_rng([self.settings.seed, epoch, batch, 2])
        return augment_views(x, rng, self.side, self.settings.augment)

    def epoch(self, sampler: PKBatchSampler, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, ...]]:
        sampler.set_epoch(epoch)
        for b, batch in enumerate(sampler):
            if b < start:
                continue
            pixel_values, grid = to_tower_inputs(self.views(batch, epoch, b), self.encoder)
            yield pixel_values, grid, torch.as_tensor(self.dataset.labels[batch], dtype=torch.int64)
