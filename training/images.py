"""The one rule that turns a decoded photo into the 8-bit RGB pixels the encoder sees.

Ingestion (``ingestion.reader.decode_photo``), training (``training.data.load_image``) and embedding
(``Encoder.preprocess``) all call :func:`to_rgb`, so a photo gives the same pixels whether it is stored,
trained on or embedded on request; an orientation or alpha rule that drifted between training and serving
would skew every vector without an error.

The rule, in order:

1. EXIF orientation is applied (a corrupt EXIF block leaves the pixels as stored, with a note).
2. High bit depth is scaled by the range the file declares, never clipped: 16-bit integers by 65535, 32-bit
   integers by 2**31 - 1 (TIFF ``BitsPerSample`` says which; negative values are refused), 32-bit floats by
   1.0 (values outside 0..1, NaN or infinity are refused: there is no one right way to show them).
3. Transparency (RGBA, LA, PA, P with a transparent colour) is laid over white.
4. Every other mode goes through Pillow's ``convert("RGB")``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import InvalidInput

log = logging.getLogger(__name__)

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_INT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_TIFF_BITS_PER_SAMPLE = 258


@dataclass(frozen=True)
class RGBImage:
    """An 8-bit RGB image; ``notes`` say what was changed on the way beyond a plain conversion."""

    image: Image.Image
    notes: tuple[str, ...] = ()


def to_rgb(image: Image.Image, where: str = "image") -> Image.Image:
    """``image`` as 8-bit RGB by the rule in this module's docstring.

    Raises:
        InvalidInput: ``image`` is not a PIL image, or its pixels cannot be shown faithfully (named by
            ``where``, with the reason).
    """
    return convert(image, where).image


def convert(image: Image.Image, where: str = "image") -> RGBImage:
    """Like :func:`to_rgb`, keeping the notes (for a run report)."""
    if not isinstance(image, Image.Image):
        raise InvalidInput(f"{where} is a {type(image).__name__}, not a PIL image")
    notes: list[str] = []
    bits = _declared_bits(image)  # before the transpose: its copy is a plain Image without the TIFF tags
    try:
        image = ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError, TypeError, KeyError) as exc:
        # A corrupt EXIF block is common in the wild; the pixels are still good, just unrotated.
        log.warning("%s: EXIF orientation unreadable (%s); used as stored", where, exc)
        notes.append(f"EXIF orientation unreadable ({exc}); used as stored")
    if image.mode == "RGB":
        return RGBImage(image, tuple(notes))
    if image.mode in _INT16_MODES or image.mode in ("I", "F"):
        return RGBImage(_high_depth_to_rgb(image, bits, where), tuple(notes))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return RGBImage(background, tuple(notes))
    return RGBImage(image.convert("RGB"), tuple(notes))


def load_image(path: Path) -> Image.Image:
    """Open, fully decode and convert the photo at ``path`` by :func:`to_rgb`.

    No size or format policy here: that is ingestion's, for files from outside (``ingestion.reader``).

    Raises:
        InvalidInput: the file cannot be read or decoded, or its pixels are refused (named).
    """
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img, where=str(path))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"{path}: cannot decode image: {exc}") from exc


def _high_depth_to_rgb(image: Image.Image, bits: int | None, where: str) -> Image.Image:
    """16/32-bit integer or 32-bit float greyscale -> RGB, scaled by the declared range (see module doc).

    ``bits`` is the file's declared bits per sample, None when it declares none.
    """
    arr = np.asarray(image)
    if image.mode == "F":
        values = arr.astype(np.float64)
        if not np.isfinite(values).all():
            raise InvalidInput(f"{where}: 32-bit float pixels include NaN or infinity")
        lo, hi = float(values.min()), float(values.max())
        if lo < 0.0 or hi > 1.0:
            raise InvalidInput(
                f"{where}: 32-bit float pixels range {lo:g}..{hi:g}, outside 0..1; save it as 8- or 16-bit"
            )
        scaled = values * 255.0
    else:
        values = arr.astype(np.int64)
        if values.min(initial=0) < 0:
            raise InvalidInput(f"{where}: 32-bit integer pixels include negative values ({values.min()})")
        # Mode "I" with no declared depth (a 16-bit PNG in older Pillow, or built in memory) is taken as
        # 16-bit when its values fit: the common case, and the one that would otherwise show as black.
        sixteen = image.mode in _INT16_MODES or bits == 16 or (bits is None and values.max(initial=0) <= 65535)
        scaled = values * (255.0 / (65535 if sixteen else 2**31 - 1))
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _declared_bits(image: Image.Image) -> int | None:
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return None
    bits = tags.get(_TIFF_BITS_PER_SAMPLE)
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return int(bits) if bits else None
