"""Fixtures for the ingestion tests: real image files (good and hostile), a demo data copy, store dumps."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from store_expectations import dump_store

from engine.settings import IngestSettings, Settings


def good_image(path: Path, seed: int, size: tuple[int, int] = (96, 80), fmt: str | None = None) -> Path:
    """A real photo-like file (smooth noise, so JPEG keeps it distinct per seed)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def png_bomb(path: Path, side: int) -> Path:
    """A valid 1-bit PNG of ``side`` x ``side`` zeros: a few KiB on disk, ``side**2`` pixels once decoded."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


class ImageFiles:
    """The image makers, as a fixture (test modules cannot import conftest reliably under importlib mode)."""

    good = staticmethod(good_image)
    bomb = staticmethod(png_bomb)


@pytest.fixture
def images() -> type[ImageFiles]:
    return ImageFiles


@pytest.fixture
def dump() -> object:
    """``dump(settings) -> Dump``: every point of both collections with payloads and vectors."""
    return dump_store


@pytest.fixture
def ing_settings(tmp_path: Path) -> Settings:
    """A fresh embedded store, no progress bars, retries that do not sleep long."""
    return Settings(
        store_path=tmp_path / "qdrant",
        progress=False,
        ingest=IngestSettings(write_batch_size=16, retry_attempts=3, retry_max_wait_s=0.01),
    )


@pytest.fixture
def demo_copy(demo_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the session's demo data, safe to modify."""
    out = tmp_path / "demo"
    shutil.copytree(demo_dir, out)
    return out
