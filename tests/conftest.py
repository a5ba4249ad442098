"""Shared fixtures: built once per test session, from real parts (tiny real Qwen3-VL, real image files,
real embedded Qdrant engine). Package-specific fixtures live in each tests/<package>/conftest.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Two cores here: keep torch from oversubscribing them when pytest-xdist or a helper process runs beside.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly-initialised full Qwen3-VL checkpoint saved in Hugging Face format."""
    from training.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen3-vl"), seed=0)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_checkpoint: Path):  # -> training.encoder.Encoder
    """The real encoder code path (``load_encoder``) over the tiny checkpoint, on CPU in fp32."""
    from training.encoder import load_encoder

    return load_encoder(tiny_checkpoint, device="cpu", dtype="float32", pixel_budget=64 * 64, dim=32)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic population on disk (photos, metadata.csv, truth.json). Treat as read-only."""
    from evaluation.demo_data import make_demo_data

    out = tmp_path_factory.mktemp("demo")
    make_demo_data(out, users=24, seed=7)
    return out


@pytest.fixture
def settings(tmp_path: Path):  # -> engine.settings.Settings
    """Settings for a fresh embedded store in a temporary folder, no progress bars."""
    from engine.settings import Settings

    return Settings(store_path=tmp_path / "qdrant", progress=False)


@pytest.fixture(params=["edge", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    """An empty store, once per embedded backend (the server backend runs in tests/engine/ integration)."""
    from engine.settings import Settings
    from engine.store import open_store

    s = Settings(store_path=tmp_path / f"qdrant-{request.param}", store_backend=request.param, progress=False)
    st = open_store(s)
    try:
        yield st
    finally:
        st.close()
