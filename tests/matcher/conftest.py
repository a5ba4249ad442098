"""Service fixtures: a store holding the demo population (tiny encoder), and ``matcher serve`` on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.settings import ServeSettings, Settings


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path, tiny_encoder: Any) -> Settings:
    """Settings of a store holding the demo population, with the demo folder as the photos root."""
    from ingestion.job import run_ingest

    s = Settings(
        store_path=tmp_path_factory.mktemp("served") / "qdrant",
        progress=False,
        serve=ServeSettings(photos_root=demo_dir),
    )
    report = run_ingest(demo_dir, demo_dir / "metadata.csv", settings=s, encoder=tiny_encoder)
    assert report.counts.users_written > 0
    return s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _running_server(store_path: Path, *args: str) -> Iterator[str]:
    """``matcher serve ARGS`` as a real uvicorn process over the store at ``store_path``; yields its base URL."""
    import httpx

    port = _free_port()
    env = {**os.environ, "MATCHER_STORE_PATH": str(store_path), "MATCHER_PROGRESS": "false"}
    cmd = [sys.executable, "-m", "matcher.cli", "serve", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"matcher serve exited with {proc.returncode}: {out}")
            try:
                httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    pytest.fail("matcher serve did not answer within 60 s")
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def start_server() -> Callable[..., contextlib.AbstractContextManager[str]]:
    """``start_server(store_path, *serve_args)``: a context manager running a real ``matcher serve``."""
    return _running_server


@pytest.fixture
def live_server(served: Settings) -> Iterator[str]:
    """``matcher serve`` as a real uvicorn process over ``served``'s store; yields its base URL."""
    with _running_server(served.store_path, "--photos", str(served.serve.photos_root)) as base:
        yield base
