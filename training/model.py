"""The encoder module itself: Qwen3-VL's vision tower, mean-pooled per image, a projection head, L2 norm.

Loading and export live in :mod:`training.encoder`; Qwen3-VL's loading details in :mod:`training.qwen3_vl`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from engine.errors import InvalidInput
from training.images import to_rgb

if TYPE_CHECKING:
    from transformers import Qwen3VLVisionModel
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

log = logging.getLogger(__name__)

# The head of a base checkpoint (no trained head) is drawn from this seed, so one source gives one encoder_id.
HEAD_SEED = 0


class ProjectionHead(nn.Module):
    """Pooled tower features ``(n, in_dim)`` -> ``(n, dim)`` (not normalised; the encoder normalises).

    ``BatchNorm1d`` first: without it, metric-learning training of the head collapses (see FINDINGS.md).
    ``hidden_dim > 0`` adds one GELU hidden layer.
    """

    def __init__(self, in_dim: int, dim: int, hidden_dim: int = 0, batch_norm: bool = True) -> None:
        super().__init__()
        if in_dim < 1 or dim < 1 or hidden_dim < 0:
            raise ValueError(f"bad head sizes: in_dim={in_dim}, dim={dim}, hidden_dim={hidden_dim}")
        self.in_dim, self.dim, self.hidden_dim, self.batch_norm = in_dim, dim, hidden_dim, batch_norm
        self.norm: nn.Module = nn.BatchNorm1d(in_dim) if batch_norm else nn.Identity()
        if hidden_dim:
            self.proj: nn.Module = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))
        else:
            self.proj = nn.Linear(in_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))

    def config(self) -> dict[str, Any]:
        """The constructor arguments, as stored in the encoder card."""
        return {
            "in_dim": self.in_dim,
            "dim": self.dim,
            "hidden_dim": self.hidden_dim,
            "batch_norm": self.batch_norm,
        }

    @classmethod
    def seeded(cls, in_dim: int, dim: int, seed: int = HEAD_SEED, **kwargs: Any) -> ProjectionHead:
        """A head initialised from ``seed`` without touching the caller's random stream."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(in_dim, dim, **kwargs)


class Encoder(nn.Module):
    """Qwen3-VL vision tower -> per-image mean of merged tokens -> projection head -> L2 normalisation.

    Attributes: ``tower`` (``Qwen3VLVisionModel``), ``head`` (``ProjectionHead``, kept in float32),
    ``processor`` (Qwen's image processor with the pinned budget), ``encoder_id``, ``dim``, ``device``,
    ``dtype`` (of the tower), ``source``, ``base_model``, ``pixel_budget``, ``min_pixels``, and two
    preprocessing steps around Qwen's processor (both off by default, both stored in the export's card so
    serving preprocesses exactly as training did):

    - ``face_crop`` (0 = off): the square of ``face_crop`` x the short side centred at (w/2, 0.45 h), where
      profile photos (and the demo's) put the face, is all the tower sees (:func:`face_crop_box`);
    - ``standardise``: each image's pixels are standardised per colour channel (zero mean, unit spread,
      after Qwen's own normalisation), which removes a photo's colour cast, brightness and contrast: an
      affine change per channel (docs/training.md);
    - ``vignette`` (0 = off): after the crop, everything outside a centred ellipse of half-width
      ``vignette`` x the image's width fades to mid-grey (:func:`vignette_weights`), so background and
      clothes in the corners cannot become a person's signature (docs/training.md, round 5).
    """

    def __init__(
        self,
        tower: Qwen3VLVisionModel,
        head: ProjectionHead,
        processor: Qwen2VLImageProcessorPil,
        *,
        source: str,
        base_model: str,
        pixel_budget: int,
        min_pixels: int,
        face_crop: float = 0.0,
        standardise: bool = False,
        vignette: float = 0.0,
    ) -> None:
        super().__init__()
        # Any: a Qwen3VLVisionModel, or a peft model wrapping it while LoRA adapters are trained.
        self.tower: Any = tower
        self.head = head
        self.processor = processor
        self.source = source
        self.base_model = base_model
        self.pixel_budget = pixel_budget
        self.min_pixels = min_pixels
        if not 0.0 <= face_crop <= 1.0:
            raise InvalidInput(f"face_crop must be in [0, 1] (0 = off), got {face_crop}")
        self.face_crop = float(face_crop)
        self.standardise = bool(standardise)
        if not 0.0 <= vignette <= 1.0:
            raise InvalidInput(f"vignette must be in [0, 1] (0 = off), got {vignette}")
        self.vignette = float(vignette)
        self.dim = head.dim
        self.merge_size = int(tower.config.spatial_merge_size)
        self.encoder_id = self.compute_id()

    @property
    def device(self) -> torch.device:
        """Where the head (and tower) live; follows ``encoder.to(...)``."""
        return next(self.head.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The tower's compute dtype (of its first weight, the patch embedding); inputs are cast to it."""
        return next(self.tower.parameters()).dtype

    # -- identity ---------------------------------------------------------------------------------------
    def preprocessing_settings(self) -> dict[str, Any]:
        """Everything in preprocessing that changes the vectors (part of ``encoder_id``)."""
        p = self.processor
        out: dict[str, Any] = {
            "patch_size": int(p.patch_size),
            "merge_size": int(p.merge_size),
            "temporal_patch_size": int(p.temporal_patch_size),
            "image_mean": [float(v) for v in p.image_mean],
            "image_std": [float(v) for v in p.image_std],
            "resample": int(p.resample),
            "min_pixels": int(self.min_pixels),
            "max_pixels": int(self.pixel_budget),
            "alpha_background": "white",
        }
        # Only when on, so encoders exported before these steps existed keep their id.
        if self.face_crop > 0:
            out["face_crop"] = self.face_crop
        if self.standardise:
            out["standardise"] = True
        if self.vignette > 0:
            out["vignette"] = self.vignette
        return out

    def compute_id(self) -> str:
        """Short hash of tower + head weights (as float32), preprocessing settings and ``dim``.

        The same weights at the same precision give the same id on every load. Loading float32 weights in
        bfloat16 rounds them, so that encoder (whose vectors differ) gets another id.
        """
        h = hashlib.sha256()  # sha256 over blake2b: ~2.5x faster here (CPU SHA extensions)
        h.update(json.dumps({"dim": self.dim, "pre": self.preprocessing_settings()}, sort_keys=True).encode())
        for prefix, module in (("tower.", self.tower), ("head.", self.head)):
            for name, tensor in sorted(module.state_dict().items()):
                h.update((prefix + name).encode())
                h.update(str(tuple(tensor.shape)).encode())
                # One tensor at a time (a float32 copy only for non-float32 weights), hashed in place.
                flat = tensor.detach().to("cpu", torch.float32).contiguous().reshape(-1)
                h.update(memoryview(flat.numpy()).cast("B"))
        return h.hexdigest()[:16]

    # -- preprocessing ----------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """PIL images -> ``(pixel_values (patches, C*T*P*P) float32, image_grid_thw (n, 3) int64)`` on CPU.

        Images are made RGB by ``training.images.to_rgb`` first (the rule ingestion and training use too).
        Raises ``InvalidInput`` for a non-image, unshowable pixels, or an aspect ratio beyond 200:1.
        """
        if len(images) == 0:
            raise InvalidInput("no images to preprocess")
        rgb = [to_rgb(im, where=f"image {i}") for i, im in enumerate(images)]
        if self.face_crop > 0:
            rgb = [im.crop(face_crop_box(im.size, self.face_crop)) for im in rgb]
        if self.vignette > 0:
            rgb = [apply_vignette(im, self.vignette) for im in rgb]
        try:
            batch = self.processor(images=rgb, return_tensors="pt")
        except (ValueError, OSError) as exc:  # extreme aspect ratio (smart_resize), truncated file data
            raise InvalidInput(f"image cannot be preprocessed: {exc}") from exc
        pixel_values, grid = batch["pixel_values"], batch["image_grid_thw"]
        if self.standardise:
            pixel_values = standardise_channels(pixel_values, grid, channels=3)
        return pixel_values, grid

    # -- forward ----------------------------------------------------------------------------------------
    def pool(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """Tower features mean-pooled per image: ``(n_images, out_hidden)`` float32, with grad.

        The tower returns the merged tokens of all images concatenated (``pooler_output``); image ``i``
        owns ``t*h*w / merge_size**2`` of them, in order.
        """
        grid = image_grid_thw.to(self.device)
        out = self.tower(pixel_values.to(self.device, self.dtype), grid_thw=grid)
        tokens = out.pooler_output
        sizes = (image_grid_thw.prod(-1) // self.merge_size**2).tolist()
        if sum(sizes) != tokens.shape[0]:
            raise RuntimeError(f"tower returned {tokens.shape[0]} tokens for grids summing to {sum(sizes)}")
        return torch.stack([chunk.float().mean(0) for chunk in torch.split(tokens, sizes)])

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """``(n_images, dim)`` float32, L2-normalised, with grad (for training)."""
        return F.normalize(self.head(self.pool(pixel_values, image_grid_thw)), dim=-1)

    @torch.inference_mode()
    def embed(
        self, images: Sequence[Image.Image] | Image.Image, batch_size: int = 8, progress: bool = False
    ) -> np.ndarray:
        """Embed PIL images: ``(n, dim)`` float32 numpy, L2-normalised, no grad, in eval mode.

        One image (not in a list) gives one ``(dim,)`` vector, as sentence-transformers' ``encode`` does.
        Raises ``InvalidInput`` for an unusable image (naming its index in ``images``).
        """
        if isinstance(images, Image.Image):
            return self.embed([images], batch_size=batch_size, progress=progress)[0]
        if batch_size < 1:
            raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out: list[np.ndarray] = []
        starts = range(0, len(images), batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="embed", unit="batch")  # type: ignore[assignment]
        with _eval_mode(self):
            for start in starts:
                chunk = images[start : start + batch_size]
                try:
                    pixel_values, grid = self.preprocess(chunk)
                except InvalidInput as exc:
                    raise InvalidInput(f"images[{start}:{start + len(chunk)}]: {exc}") from exc
                out.append(self(pixel_values, grid).float().cpu().numpy())
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def face_crop_box(size: tuple[int, int], frac: float) -> tuple[int, int, int, int]:
    """The face square of an image of ``size`` (w, h): side ``frac`` x the short side, centred at
    (w/2, 0.45 h) and shifted to lie inside the image; a Pillow box (left, upper, right, lower) in pixels."""
    w, h = size
    side = max(1, min(w, h, int(round(frac * min(w, h)))))
    left = int(round(w / 2 - side / 2))
    top = int(round(0.45 * h - side / 2))
    left, top = min(max(0, left), w - side), min(max(0, top), h - side)
    return (left, top, left + side, top + side)


# The face vignette's ellipse: as tall as ``VIGNETTE_ASPECT`` x its half-width, a soft edge from
# ``VIGNETTE_INNER`` to ``VIGNETTE_OUTER`` of its radius (docs/training.md, round 5).
VIGNETTE_ASPECT, VIGNETTE_INNER, VIGNETTE_OUTER = 1.2, 0.9, 1.1
VIGNETTE_GREY = 0.5


def vignette_weights(height: int, width: int, radius: float) -> torch.Tensor:
    """Weights ``(height, width)`` float32 in 0..1 of the face vignette: 1 inside an ellipse centred on the
    image, of half-width ``radius`` x the width and half-height ``VIGNETTE_ASPECT`` x ``radius`` x the height,
    falling to 0 across a soft edge; a pixel becomes ``w * pixel + (1 - w) * mid-grey``.

    Raises:
        InvalidInput: ``radius`` not in (0, 1] or an empty size.
    """
    if not 0.0 < radius <= 1.0 or height < 1 or width < 1:
        raise InvalidInput(f"vignette radius must be in (0, 1] and the size positive, got {radius}, {height}x{width}")
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height - 0.5
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width - 0.5
    d = torch.sqrt((xs.view(1, -1) / radius) ** 2 + (ys.view(-1, 1) / (VIGNETTE_ASPECT * radius)) ** 2)
    return ((VIGNETTE_OUTER - d) / (VIGNETTE_OUTER - VIGNETTE_INNER)).clamp(0.0, 1.0)


def apply_vignette(img: Image.Image, radius: float) -> Image.Image:
    """``img`` (RGB) with everything outside the face vignette (:func:`vignette_weights`) faded to mid-grey."""
    arr = np.asarray(img, dtype=np.float32)
    w = vignette_weights(arr.shape[0], arr.shape[1], radius).numpy()[..., None]
    out = arr * w + (255.0 * VIGNETTE_GREY) * (1.0 - w)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def standardise_channels(pixel_values: torch.Tensor, grid: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """Per image and colour channel: ``0.5 * (x - mean) / max(std, 0.04)`` over that image's patches.

    ``pixel_values`` (patches, C*T*P*P) in Qwen's layout (channel-major within a patch), ``grid`` (n, 3):
    image ``i`` owns ``t*h*w`` consecutive rows. The 0.5 keeps the spread near that of Qwen's own
    normalisation (mean = std = 0.5 maps 0..255 to -1..1); the floor keeps a flat image finite.
    """
    sizes = grid.prod(-1).tolist()
    out = []
    for chunk in torch.split(pixel_values, sizes):
        x = chunk.reshape(chunk.shape[0], channels, -1)
        mean = x.mean(dim=(0, 2), keepdim=True)
        std = x.std(dim=(0, 2), keepdim=True).clamp_min(0.04)
        out.append((0.5 * (x - mean) / std).reshape(chunk.shape))
    return torch.cat(out)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
