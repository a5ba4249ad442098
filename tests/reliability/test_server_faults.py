"""Store faults on a real Qdrant server (testcontainers, the pinned image; integration: skipped without Docker).

- A short outage part way through a batch (the container is *paused* at the second photo write, and
  unpaused two seconds later): the job's retries with backoff ride it out; the run completes exactly.
- A long outage (the container is *stopped* at the second photo write): the run ends with a clear
  ``StoreUnavailable`` saying to run it again; the server is started again (same volume, same port); the
  re-run skips what was acknowledged and completes with exactly the expected points.

The embedded-store versions of these faults (a wrapper failing the Nth write) are in tests/ingestion/test_job.py
(``test_transient_store_failures_are_retried``, ``test_store_down_part_way_then_rerun_ends_exact``).
"""

from __future__ import annotations

import ast
import logging
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from engine.errors import StoreUnavailable
from engine.schema import PHOTOS
from engine.settings import IngestSettings, Settings
from engine.store import open_store
from engine.store.base import Point
from ingestion.job import run_ingest

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]
API_KEY = "faults-" + uuid.uuid4().hex


def pinned_image() -> str:
    tree = ast.parse((TESTS / "engine" / "conftest.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "QDRANT_SERVER_IMAGE" for t in node.targets):
            return str(ast.literal_eval(node.value))
    raise AssertionError("tests/engine/conftest.py has no QDRANT_SERVER_IMAGE")


def wait_ready(url: str, timeout: float = 60.0) -> None:
    """Until the server's /readyz (no API key needed) answers 200."""
    t0 = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:  # noqa: S310 - a local test URL
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{url} not ready after {timeout} s")
        time.sleep(0.25)


@pytest.fixture
def own_qdrant() -> Iterator[tuple[Any, str]]:
    """A Qdrant container of this test's own (it gets paused and stopped), its REST port fixed so that a
    restart keeps the URL. Yields (docker container, url)."""
    try:
        from docker.errors import DockerException
        from testcontainers.community.qdrant import QdrantContainer
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"testcontainers is not installed: {exc}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        container = QdrantContainer(pinned_image(), api_key=API_KEY).with_bind_ports(6333, port)
        container.start()
    except DockerException as exc:
        pytest.skip(f"no Docker engine: {exc}")
    try:
        url = f"http://{container.get_container_host_ip()}:{port}"
        wait_ready(url)
        yield container.get_wrapped_container(), url
    finally:
        container.stop()


def server_settings(url: str, tmp_path: Path) -> Settings:
    return Settings(
        store_backend="server",
        qdrant_url=url,
        qdrant_api_key=API_KEY,
        qdrant_timeout_s=1.0,
        collection_prefix=f"f{uuid.uuid4().hex[:8]}_",
        store_path=tmp_path / "unused",
        progress=False,
        ingest=IngestSettings(write_batch_size=8, retry_attempts=6, retry_max_wait_s=2.0),
    )


def fault_at_photo_write(store: Any, n: int, fault: Callable[[], None]) -> Any:
    """Wrap ``store.upsert`` so that ``fault()`` runs once, just before the ``n``-th photo write."""
    inner = store.upsert
    calls = {"n": 0}

    def upsert(collection: str, points: Sequence[Point]) -> None:
        if collection == PHOTOS:
            calls["n"] += 1
            if calls["n"] == n:
                fault()
        inner(collection, points)

    store.upsert = upsert
    return store


def test_short_outage_is_ridden_out(own_qdrant, demo, tmp_path, pixel_embedder, exact, caplog) -> None:
    container, url = own_qdrant
    settings = server_settings(url, tmp_path)

    def pause_two_seconds() -> None:
        container.pause()
        threading.Timer(2.0, container.unpause).start()

    caplog.set_level(logging.WARNING, logger="ingestion")
    with open_store(settings) as store:
        fault_at_photo_write(store, 2, pause_two_seconds)
        report = run_ingest(demo, demo / "metadata.csv", settings=settings, encoder=pixel_embedder, store=store)
    assert report.completed
    assert any("upsert photos failed (try 1" in r.getMessage() for r in caplog.records), "no outage was seen"
    exact(settings, demo, demo / "metadata.csv", pixel_embedder)


def test_long_outage_ends_cleanly_and_rerun_completes(own_qdrant, demo, tmp_path, pixel_embedder, exact) -> None:
    container, url = own_qdrant
    settings = server_settings(url, tmp_path)
    meta = demo / "metadata.csv"
    with open_store(settings) as store:
        fault_at_photo_write(store, 2, lambda: container.stop(timeout=10))
        with pytest.raises(StoreUnavailable, match="run the same command again"):
            run_ingest(demo, meta, settings=settings, encoder=pixel_embedder, store=store)

    container.start()
    wait_ready(url)
    report = run_ingest(demo, meta, settings=settings, encoder=pixel_embedder)
    assert report.completed
    # The first batch was acknowledged before the stop: the server kept it across the restart.
    assert report.counts.photos_skipped == settings.ingest.write_batch_size
    exact(settings, demo, meta, pixel_embedder)
