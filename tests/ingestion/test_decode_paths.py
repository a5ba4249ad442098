"""One decoder: a file gives the same pixels stored (ingestion), trained on (training) and embedded on request.

Also the high-bit-depth cases that used to be corrupted silently (16-bit grey PNG decoded as white, 32-bit float
TIFF as black, 32-bit integer TIFF as white): scaled by their declared range, or refused with a reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import InvalidInput
from engine.settings import ImageSettings
from ingestion.reader import DecodedPhoto, Refused, decode_photo, read_photo
from ingestion.report import Reason
from training.data import load_image
from training.encoder import Encoder

LIMITS = ImageSettings()
H, W = 72, 96


def _ramp() -> np.ndarray:
    """(H, W) float64 in 0..1: a horizontal ramp plus a vertical one (mean 0.5)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    return 0.5 * xx / (W - 1) + 0.5 * yy / (H - 1)


def _rgb_array(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((W, H), Image.Resampling.BILINEAR))


def _exif_rotated_jpeg(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    Image.fromarray(_rgb_array(1)).save(path, "JPEG", exif=exif.tobytes(), quality=95)


def _rgba_png(path: Path) -> None:
    rgba = np.dstack([_rgb_array(2), (_ramp() * 255).astype(np.uint8)])
    Image.fromarray(rgba).save(path)


def _palette_transparent_png(path: Path) -> None:
    im = Image.fromarray(_rgb_array(3)).quantize(16)
    im.save(path, transparency=0)


def _la_png(path: Path) -> None:
    grey = (_ramp() * 255).astype(np.uint8)
    Image.fromarray(np.dstack([grey, 255 - grey])).save(path)  # mode LA


def _cmyk_jpeg(path: Path) -> None:
    Image.fromarray(_rgb_array(4)).convert("CMYK").save(path, "JPEG", quality=95)


def _grey16_png(path: Path) -> None:
    Image.fromarray(np.rint(_ramp() * 65535).astype(np.uint16)).save(path)


def _float_tiff(path: Path) -> None:
    Image.fromarray(_ramp().astype(np.float32)).save(path)


def _int32_tiff(path: Path) -> None:
    Image.fromarray(np.rint(_ramp() * (2**31 - 1)).astype(np.int32)).save(path)


FILES: dict[str, Callable[[Path], None]] = {
    "exif.jpg": _exif_rotated_jpeg,
    "rgba.png": _rgba_png,
    "palette.png": _palette_transparent_png,
    "la.png": _la_png,
    "cmyk.jpg": _cmyk_jpeg,
    "grey16.png": _grey16_png,
    "float.tif": _float_tiff,
    "int32.tif": _int32_tiff,
}


def _ingest(root: Path, name: str) -> DecodedPhoto:
    raw = read_photo(root.resolve(), name, LIMITS)
    assert not isinstance(raw, Refused), raw
    decoded = decode_photo(raw, LIMITS)
    assert not isinstance(decoded, Refused), decoded
    return decoded


@pytest.mark.parametrize("name", sorted(FILES))
def test_same_file_same_pixels_on_every_path(tmp_path: Path, tiny_encoder: Encoder, name: str) -> None:
    FILES[name](tmp_path / name)
    stored = _ingest(tmp_path, name).image
    trained = load_image(tmp_path / name)
    with Image.open(tmp_path / name) as opened:  # what a caller of Encoder.embed hands over
        pixels = [tiny_encoder.preprocess([im])[0] for im in (stored, trained, opened)]
    assert stored.mode == trained.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(stored), np.asarray(trained))
    torch_equal = [bool((pixels[0] == p).all()) for p in pixels[1:]]
    assert torch_equal == [True, True], name


def test_exif_rotation_and_white_alpha_are_the_rule(tmp_path: Path) -> None:
    _exif_rotated_jpeg(tmp_path / "exif.jpg")
    assert load_image(tmp_path / "exif.jpg").size == (H, W)  # turned: the sides swap
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize("name", ["grey16.png", "float.tif", "int32.tif"])
def test_high_bit_depth_is_scaled_not_clipped(tmp_path: Path, tiny_encoder: Encoder, name: str) -> None:
    FILES[name](tmp_path / name)
    Image.fromarray(np.rint(_ramp() * 255).astype(np.uint8)).save(tmp_path / "grey8.png")
    deep = np.asarray(_ingest(tmp_path, name).image, dtype=np.int16)
    eight = np.asarray(_ingest(tmp_path, "grey8.png").image, dtype=np.int16)
    assert abs(float(deep.mean()) - 127.5) < 2.0  # was ~254 (16-bit, 32-bit int) or 0 (float)
    assert int(np.abs(deep - eight).max()) <= 1
    vectors = tiny_encoder.embed(
        [_ingest(tmp_path, n).image for n in (name, "grey8.png")] + [Image.new("RGB", (W, H), (255,) * 3)]
    )
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((H, W), 3.5, np.float32), "outside 0..1"),
        (np.full((H, W), np.nan, np.float32), "NaN"),
        (np.full((H, W), -5, np.int32), "negative"),
    ],
)
def test_unshowable_pixels_are_refused_with_a_reason(tmp_path: Path, array: np.ndarray, message: str) -> None:
    Image.fromarray(array).save(tmp_path / "odd.tif")
    raw = read_photo(tmp_path.resolve(), "odd.tif", LIMITS)
    assert not isinstance(raw, Refused)
    refused = decode_photo(raw, LIMITS)
    assert isinstance(refused, Refused) and refused.reason is Reason.NOT_AN_IMAGE
    assert "odd.tif" in refused.detail and message in refused.detail
    with pytest.raises(InvalidInput, match=message):
        load_image(tmp_path / "odd.tif")
