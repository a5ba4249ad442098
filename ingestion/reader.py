"""Safe reading of photo files: path checks before any open, size and pixel limits, decode with Pillow.

Order matters for safety: the path is resolved (symlinks included) and checked to lie inside PHOTOS_DIR
*before* the file is opened; the file is opened by its resolved path with ``O_NOFOLLOW`` and checked to be a
regular file of a sane size *before* it is read; the pixel count from the header is checked *before* the
pixels are decoded (a PNG "decompression bomb" of a few KiB can declare billions of pixels).

Decision for animated images (GIF, APNG, WebP): the first frame is used, and a notice says so in the report.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from engine.errors import InvalidInput
from engine.settings import ImageSettings
from ingestion.report import Reason
from training.images import convert

log = logging.getLogger(__name__)

# Formats a phone or a web upload gives; anything else Pillow can open (EPS, PSD, ICO, ...) is refused.
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})


@dataclass(frozen=True)
class Refused:
    """Why a photo was not taken."""

    reason: Reason
    detail: str


@dataclass(frozen=True)
class RawPhoto:
    """A photo's bytes, read from a checked path. ``rel_path`` is POSIX, relative to PHOTOS_DIR."""

    rel_path: str
    data: bytes
    sha256: str  # hex digest of ``data``


@dataclass(frozen=True)
class DecodedPhoto:
    """An RGB image with EXIF orientation applied. ``note`` says what was changed on the way, if anything."""

    image: Image.Image
    width: int
    height: int
    note: str | None = None


def check_relative(rel: str) -> Refused | None:
    """Refuse an ``image_path`` that is absolute, empty, or climbs with ``..``; None if it may be resolved."""
    if not rel or not rel.strip():
        return Refused(Reason.INVALID_FIELD, "image_path: empty")
    if "\x00" in rel:
        return Refused(Reason.INVALID_FIELD, "image_path: contains a NUL byte")
    posix = rel.replace("\\", "/")
    if posix.startswith("/") or os.path.isabs(rel):
        return Refused(
            Reason.OUTSIDE_PHOTOS_DIR, f"image_path {rel!r} is absolute; it must be relative to PHOTOS_DIR"
        )
    if ".." in PurePosixPath(posix).parts:
        return Refused(Reason.OUTSIDE_PHOTOS_DIR, f"image_path {rel!r} contains '..'")
    return None


def resolve_inside(root_real: Path, rel: str) -> Path | Refused:
    """The real path of ``root_real / rel`` (symlinks resolved), or ``Refused`` if outside ``root_real``.

    ``root_real`` must itself be a resolved path (``Path.resolve()``). Nothing is opened here.
    """
    refused = check_relative(rel)
    if refused is not None:
        return refused
    real = Path(os.path.realpath(root_real / rel.replace("\\", "/")))
    if real != root_real and root_real not in real.parents:
        return Refused(Reason.OUTSIDE_PHOTOS_DIR, f"{rel!r} resolves outside PHOTOS_DIR (a symlink?)")
    return real


def read_photo(root_real: Path, rel: str, limits: ImageSettings) -> RawPhoto | Refused:
    """Read the bytes of ``rel`` under ``root_real`` after checking path, file type and size.

    Never opens a path outside ``root_real``; never follows a symlink at open time (the checked real path
    is opened with ``O_NOFOLLOW``, so a link swapped in after the check fails instead of being followed).
    """
    real = resolve_inside(root_real, rel)
    if isinstance(real, Refused):
        return real
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return Refused(Reason.MISSING_FILE, f"{rel!r}: no such file")
    except OSError as exc:
        return Refused(Reason.NOT_AN_IMAGE, f"{rel!r}: cannot stat ({exc.strerror})")
    # Check the type before opening: opening a FIFO would block, a device could be endless.
    if not stat.S_ISREG(st.st_mode):
        return Refused(Reason.NOT_A_FILE, f"{rel!r} is not a regular file")
    if st.st_size == 0:
        return Refused(Reason.ZERO_BYTES, f"{rel!r} is empty (0 bytes)")
    if st.st_size > limits.max_file_bytes:
        return Refused(
            Reason.TOO_LARGE, f"{rel!r} is {st.st_size} bytes, over the limit of {limits.max_file_bytes}"
        )
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        return Refused(Reason.NOT_AN_IMAGE, f"{rel!r}: cannot open ({exc.strerror})")
    with os.fdopen(fd, "rb") as fh:
        fst = os.fstat(fh.fileno())
        if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            return Refused(Reason.NOT_A_FILE, f"{rel!r} changed while being checked")
        # Read one byte more than the limit: a file that grew after the stat is caught too.
        data = fh.read(limits.max_file_bytes + 1)
    if len(data) > limits.max_file_bytes:
        return Refused(Reason.TOO_LARGE, f"{rel!r} is over the limit of {limits.max_file_bytes} bytes")
    if not data:
        return Refused(Reason.ZERO_BYTES, f"{rel!r} is empty (0 bytes)")
    return RawPhoto(rel_path=PurePosixPath(rel.replace("\\", "/")).as_posix(), data=data, sha256=sha256(data))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_photo(raw: RawPhoto, limits: ImageSettings) -> DecodedPhoto | Refused:
    """Decode ``raw`` to an RGB image: format allow-list, pixel limit checked on the header, full decode
    (a truncated file fails here, not later in the encoder), then ``training.images.convert`` (EXIF
    orientation, high bit depth scaled, alpha flattened on white: the rule training and embedding use)."""
    rel = raw.rel_path
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) between MAX_IMAGE_PIXELS and twice that; our limit comes first anyway.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(raw.data))
            fmt = im.format or "?"
            if fmt not in ACCEPTED_FORMATS:
                return Refused(Reason.NOT_AN_IMAGE, f"{rel!r}: {fmt} images are not accepted")
            w, h = im.size
            if w * h > limits.max_pixels:
                return Refused(
                    Reason.TOO_LARGE,
                    f"{rel!r}: {w}x{h} = {w * h} pixels, over the limit of {limits.max_pixels}",
                )
            if min(w, h) < limits.min_side:
                return Refused(
                    Reason.TOO_SMALL, f"{rel!r}: {w}x{h}, a side is under {limits.min_side} pixels"
                )
            n_frames = int(getattr(im, "n_frames", 1) or 1)
            im.seek(0)
            im.load()  # decode now: truncation and corrupt data surface here
            rgb = convert(im, where=repr(rel))
    except InvalidInput as exc:  # pixels that cannot be shown faithfully (a float image outside 0..1, ...)
        return Refused(Reason.NOT_AN_IMAGE, str(exc))
    except UnidentifiedImageError:
        return Refused(Reason.NOT_AN_IMAGE, f"{rel!r} is not an image Pillow can identify")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Refused(Reason.TOO_LARGE, f"{rel!r}: decompression bomb ({exc})")
    except (OSError, SyntaxError, EOFError, ValueError, struct.error, MemoryError) as exc:
        msg = str(exc)
        if "truncat" in msg.lower() or isinstance(exc, EOFError):
            return Refused(Reason.TRUNCATED, f"{rel!r} is truncated ({msg or type(exc).__name__})")
        return Refused(Reason.NOT_AN_IMAGE, f"{rel!r} cannot be decoded ({type(exc).__name__}: {msg})")
    notes = [f"animated image ({n_frames} frames): first frame used"] if n_frames > 1 else []
    notes += rgb.notes
    image = rgb.image
    return DecodedPhoto(image=image, width=image.width, height=image.height, note="; ".join(notes) or None)

