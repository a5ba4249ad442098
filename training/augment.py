"""Identity-keeping photo augmentations (Pillow + NumPy), deterministic under a seed.

(The tensor path, ``augment_backend="tensor"``, reads the same settings: :mod:`training.tensor_augment`.)

A person stays the same person under a small crop, a mirror image, a lighting change, a slight tilt and
JPEG re-compression; these are the changes between two profile photos the model should ignore. Hue shifts
are kept small because skin and hair colour are part of who someone is.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance
from pydantic import BaseModel, Field, model_validator


class AugmentSettings(BaseModel):
    """Strength of each augmentation; a probability or range of 0 turns one off."""

    crop_scale: tuple[float, float] = Field(default=(0.6, 1.0), description="Area share kept by the crop.")
    crop_ratio: tuple[float, float] = Field(default=(3 / 4, 4 / 3), description="Aspect-ratio range.")
    flip_p: float = Field(default=0.5, ge=0.0, le=1.0)
    brightness: float = Field(default=0.25, ge=0.0, lt=1.0, description="Factor drawn from [1-b, 1+b].")
    contrast: float = Field(default=0.25, ge=0.0, lt=1.0)
    saturation: float = Field(default=0.2, ge=0.0, lt=1.0)
    hue: float = Field(default=0.02, ge=0.0, le=0.5, description="Hue shift in turns, drawn from [-h, h].")
    channel_gain: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Per-channel gain from [1-g, 1+g] (a colour cast); 0 = off."
    )
    light_ramp: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Light from one side: a linear ramp of up to +-r/2 of full scale."
    )
    rotation_deg: float = Field(default=8.0, ge=0.0, le=45.0)
    scale_jitter: float = Field(
        default=0.15, ge=0.0, le=1.0, description="Tensor path: face square scaled by exp(U(-s, s)) (not crop_scale)."
    )
    shift: float = Field(default=0.06, ge=0.0, le=0.5, description="Tensor path: move by U(-s, s) x the face side.")
    jpeg_p: float = Field(default=0.5, ge=0.0, le=1.0)
    jpeg_quality: tuple[int, int] = Field(default=(40, 95))

    @model_validator(mode="after")
    def _ranges(self) -> AugmentSettings:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality must satisfy 1 <= lo <= hi <= 100, got {self.jpeg_quality}")
        return self


def item_rng(seed: int, epoch: int, index: int, view: int = 0) -> np.random.Generator:
    """The random stream of one augmented view: depends only on its four coordinates, never on order."""
    return np.random.default_rng([seed, epoch, index, view])


class Augment:
    """Apply the augmentations of ``settings`` to an RGB image with a given random generator.

    Output has the input's size (the crop is resized back), so later resizing behaves as for the original.
    """

    def __init__(self, settings: AugmentSettings | None = None) -> None:
        self.settings = settings or AugmentSettings()

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        s = self.settings
        img = img.convert("RGB")
        size = img.size
        if s.rotation_deg > 0:
            angle = float(rng.uniform(-s.rotation_deg, s.rotation_deg))
            # Fill the uncovered corners with the mean colour rather than black, so no edge cue appears.
            fill = img.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
            img = img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=fill)
        img = self._random_resized_crop(img, rng).resize(size, Image.Resampling.BICUBIC)
        if rng.random() < s.flip_p:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # Jitter in a random order, as torchvision's ColorJitter does.
        for op in rng.permutation(4):
            if op == 0 and s.brightness > 0:
                img = ImageEnhance.Brightness(img).enhance(rng.uniform(1 - s.brightness, 1 + s.brightness))
            elif op == 1 and s.contrast > 0:
                img = ImageEnhance.Contrast(img).enhance(rng.uniform(1 - s.contrast, 1 + s.contrast))
            elif op == 2 and s.saturation > 0:
                img = ImageEnhance.Color(img).enhance(rng.uniform(1 - s.saturation, 1 + s.saturation))
            elif op == 3 and s.hue > 0:
                img = _shift_hue(img, float(rng.uniform(-s.hue, s.hue)))
        if s.channel_gain > 0 or s.light_ramp > 0:
            img = _cast_and_ramp(img, rng, s.channel_gain, s.light_ramp)
        if rng.random() < s.jpeg_p:
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=int(rng.integers(s.jpeg_quality[0], s.jpeg_quality[1] + 1)))
            buf.seek(0)
            with Image.open(buf) as decoded:
                img = decoded.convert("RGB")
        return img

    def _random_resized_crop(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        s = self.settings
        w, h = img.size
        area = w * h
        log_ratio = np.log(s.crop_ratio)
        for _ in range(10):  # torchvision's scheme: try a few draws, fall back to a centre crop
            target = area * rng.uniform(*s.crop_scale)
            ratio = float(np.exp(rng.uniform(*log_ratio)))
            cw, ch = round(np.sqrt(target * ratio)), round(np.sqrt(target / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                return img.crop((x, y, x + cw, y + ch))
        side = min(w, h)
        x, y = (w - side) // 2, (h - side) // 2
        return img.crop((x, y, x + side, y + side))


def _cast_and_ramp(img: Image.Image, rng: np.random.Generator, gain: float, ramp: float) -> Image.Image:
    """A colour cast (each channel times a factor from [1-gain, 1+gain]) and light from a random side (a
    linear ramp of depth up to ``ramp`` of full scale): the lighting changes between two profile photos."""
    if gain > 0:
        levels = np.arange(256, dtype=np.float64)
        factors = rng.uniform(1 - gain, 1 + gain, size=3)
        lut = np.concatenate([np.clip(np.rint(levels * f), 0, 255) for f in factors]).astype(np.uint8)
        img = img.point(lut.tolist())  # one lookup table per channel, in C
    if ramp > 0:
        w, h = img.size
        angle, depth = rng.uniform(0, 2 * np.pi), rng.uniform(0, ramp)
        xs = np.linspace(-0.5, 0.5, w, dtype=np.float32) * np.float32(np.cos(angle))
        ys = np.linspace(-0.5, 0.5, h, dtype=np.float32) * np.float32(np.sin(angle))
        offset = np.rint(255.0 * depth * (ys[:, None] + xs[None, :])).astype(np.int16)
        x = np.asarray(img, dtype=np.int16) + offset[..., None]
        img = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
    return img


def _shift_hue(img: Image.Image, shift: float) -> Image.Image:
    """Rotate hue by ``shift`` turns (PIL's HSV has hue in 0..255)."""
    hsv = np.asarray(img.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(shift * 255)) % 256
    return Image.fromarray(hsv, mode="HSV").convert("RGB")
