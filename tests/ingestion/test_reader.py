"""The photo reader on real files, good and hostile: every bad one is refused with the right reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from engine.settings import ImageSettings
from ingestion.reader import Refused, check_relative, decode_photo, read_photo
from ingestion.report import Reason

LIMITS = ImageSettings()


def read_and_decode(root: Path, rel: str, limits: ImageSettings = LIMITS):
    raw = read_photo(root.resolve(), rel, limits)
    if isinstance(raw, Refused):
        return raw
    return decode_photo(raw, limits)


def test_good_jpeg_is_rgb_with_hash(tmp_path: Path, images) -> None:
    images.good(tmp_path / "a.jpg", seed=1)
    raw = read_photo(tmp_path.resolve(), "a.jpg", LIMITS)
    assert not isinstance(raw, Refused)
    assert len(raw.sha256) == 64 and raw.rel_path == "a.jpg"
    dec = decode_photo(raw, LIMITS)
    assert not isinstance(dec, Refused)
    assert dec.image.mode == "RGB" and (dec.width, dec.height) == (96, 80) and dec.note is None


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            lambda p, im: p.write_bytes(im.good(p.with_suffix(".tmp.jpg"), 2).read_bytes()[:300]),
            Reason.TRUNCATED,
        ),
        (lambda p, im: p.write_bytes(b""), Reason.ZERO_BYTES),
        (lambda p, im: p.write_text("this is not a photo\n" * 20), Reason.NOT_AN_IMAGE),
        (lambda p, im: Image.new("RGB", (1, 1), (200, 10, 10)).save(p, format="PNG"), Reason.TOO_SMALL),
        # 7000 x 7000 = 49 M pixels: over our 40 M limit, under Pillow's bomb guard (our check is what fires).
        (lambda p, im: im.bomb(p, 7000), Reason.TOO_LARGE),
        # 20000 x 20000 = 400 M pixels from a ~50 KiB file: Pillow's guard would fire too; ours comes first.
        (lambda p, im: im.bomb(p, 20000), Reason.TOO_LARGE),
        (lambda p, im: Image.new("RGB", (96, 96)).save(p, format="ICO"), Reason.NOT_AN_IMAGE),
    ],
    ids=[
        "truncated-jpeg",
        "zero-bytes",
        "text-as-jpg",
        "1x1",
        "png-bomb-ours",
        "png-bomb-huge",
        "ico-format",
    ],
)
def test_hostile_file_is_refused_with_reason(tmp_path: Path, images, make, reason: Reason) -> None:
    path = tmp_path / "bad.jpg"
    make(path, images)
    out = read_and_decode(tmp_path, "bad.jpg")
    assert isinstance(out, Refused), out
    assert out.reason == reason, out.detail
    assert "bad.jpg" in out.detail


def test_file_over_byte_limit_is_refused_before_decode(tmp_path: Path, images) -> None:
    images.good(tmp_path / "big.png", seed=3, size=(300, 300))
    limits = ImageSettings(max_file_bytes=1000)
    out = read_photo(tmp_path.resolve(), "big.png", limits)
    assert isinstance(out, Refused) and out.reason == Reason.TOO_LARGE


def test_animated_gif_takes_first_frame_with_a_note(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (80, 80), c) for c in [(250, 0, 0), (0, 0, 250), (0, 250, 0)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = read_and_decode(tmp_path, "anim.gif")
    assert not isinstance(out, Refused)
    assert out.note is not None and "3 frames" in out.note
    r, g, b = out.image.getpixel((40, 40))
    assert r > 200 and b < 50  # the first (red) frame


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (120, 80), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    img.save(tmp_path / "rot.jpg", exif=exif)
    out = read_and_decode(tmp_path, "rot.jpg")
    assert not isinstance(out, Refused)
    assert (out.width, out.height) == (80, 120)


def test_transparent_png_is_flattened_on_white(tmp_path: Path) -> None:
    Image.new("RGBA", (80, 80), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    out = read_and_decode(tmp_path, "clear.png")
    assert not isinstance(out, Refused)
    assert out.image.mode == "RGB" and out.image.getpixel((5, 5)) == (255, 255, 255)


def test_symlink_to_outside_is_refused_without_reading(tmp_path: Path, images) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    secret = images.good(tmp_path / "outside" / "secret.jpg", seed=4)
    (root / "link.jpg").symlink_to(secret)
    out = read_photo(root.resolve(), "link.jpg", LIMITS)
    assert isinstance(out, Refused) and out.reason == Reason.OUTSIDE_PHOTOS_DIR


def test_symlink_inside_is_followed(tmp_path: Path, images) -> None:
    images.good(tmp_path / "real.jpg", seed=5)
    (tmp_path / "alias.jpg").symlink_to(tmp_path / "real.jpg")
    out = read_photo(tmp_path.resolve(), "alias.jpg", LIMITS)
    assert not isinstance(out, Refused) and out.rel_path == "alias.jpg"


@pytest.mark.parametrize("rel", ["../outside.jpg", "a/../../outside.jpg", "/etc/passwd", "\\\\server\\x.jpg"])
def test_paths_that_climb_or_are_absolute_are_refused(tmp_path: Path, images, rel: str) -> None:
    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    images.good(tmp_path / "outside.jpg", seed=6)
    out = read_photo(root.resolve(), rel, LIMITS)
    assert isinstance(out, Refused) and out.reason == Reason.OUTSIDE_PHOTOS_DIR


def test_check_relative_accepts_plain_paths() -> None:
    assert check_relative("photos/u1/1.jpg") is None
    assert check_relative("") is not None


def test_fifo_and_folder_are_not_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "dir.jpg").mkdir()
    for name in ("pipe.jpg", "dir.jpg"):
        out = read_photo(tmp_path.resolve(), name, LIMITS)
        assert isinstance(out, Refused) and out.reason == Reason.NOT_A_FILE, name


def test_missing_file(tmp_path: Path) -> None:
    out = read_photo(tmp_path.resolve(), "nope.jpg", LIMITS)
    assert isinstance(out, Refused) and out.reason == Reason.MISSING_FILE


def test_truncated_png(tmp_path: Path, images) -> None:
    images.good(tmp_path / "ok.png", seed=7, size=(200, 200))
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:-400])
    out = read_and_decode(tmp_path, "cut.png")
    assert isinstance(out, Refused) and out.reason == Reason.TRUNCATED
