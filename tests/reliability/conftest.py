"""Fixtures for the fault-injection tests: a torch-free embedder shared with the child worker process, a
private copy of the demo data, an independent check of what the store must hold, a closed port, and a fake
Qdrant (a local HTTP server) that answers what a test wants and records what it was sent."""

from __future__ import annotations

import http.server
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps
from store_expectations import Dump, dump_store, expected_photos

from engine.schema import PHOTOS, USERS, user_point_id
from engine.settings import IngestSettings, Settings

HERE = Path(__file__).resolve().parent
CHILD = HERE / "ingest_child.py"


def _load_child() -> ModuleType:
    # Loaded by path: under --import-mode=importlib test folders are not packages one can import from.
    spec = importlib.util.spec_from_file_location("reliability_ingest_child", CHILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


child = _load_child()


@pytest.fixture(scope="session")
def pixel_embedder() -> Any:
    """The child's ``PixelEmbedder`` (numpy only, deterministic across processes)."""
    return child.PixelEmbedder()


@pytest.fixture
def demo(demo_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the session's demo data (24 users)."""
    out = tmp_path / "demo"
    shutil.copytree(demo_dir, out)
    return out


@pytest.fixture
def rel_settings(tmp_path: Path) -> Settings:
    """A fresh embedded Edge store, small write batches (so a run has many of them), quick retries."""
    return Settings(
        store_path=tmp_path / "qdrant",
        progress=False,
        ingest=IngestSettings(write_batch_size=8, retry_attempts=3, retry_max_wait_s=0.01),
    )


# -- what the store must hold --------------------------------------------------------------------------------


def check_exact(settings: Settings, root: Path, metadata: Path, embedder: Any) -> Dump:
    """The store holds exactly the expected photos (ids, payloads, each vector = the embedding of that very
    file), no point twice, and every user vector = the normalised mean of that user's stored photo vectors."""
    want = expected_photos(root, metadata, embedder.encoder_id)
    d = dump_store(settings)
    assert set(d.photos) == set(want), (len(d.photos), len(want))
    assert d.counts[PHOTOS] == len(want), "a point counted twice"
    for pid, (payload, vec) in d.photos.items():
        assert {k: payload.get(k) for k in want[pid]} == want[pid], pid
        with Image.open(root / payload["source_path"]) as im:
            img = ImageOps.exif_transpose(im).convert("RGB")
        np.testing.assert_allclose(vec, embedder.embed([img])[0], atol=1e-5, err_msg=payload["source_path"])
    by_user: dict[str, list[str]] = {}
    for pid, (payload, _) in d.photos.items():
        by_user.setdefault(payload["user_id"], []).append(pid)
    assert set(d.users) == {user_point_id(u) for u in by_user} and d.counts[USERS] == len(by_user)
    for uid, pids in by_user.items():
        payload, vec = d.users[user_point_id(uid)]
        assert sorted(payload["photo_ids"]) == sorted(pids) and payload["n_photos"] == len(pids), uid
        mean = np.mean([d.photos[p][1] for p in pids], axis=0)
        np.testing.assert_allclose(vec, mean / np.linalg.norm(mean), atol=1e-5, err_msg=uid)
    return d


@pytest.fixture
def dump() -> Callable[[Settings], Dump]:
    """``dump(settings) -> Dump``: every point of both collections (opens and closes the store)."""
    return dump_store


@pytest.fixture
def expected() -> Callable[..., dict[str, dict[str, Any]]]:
    """``expected(root, metadata, encoder_id) -> {photo point id: payload}`` from the CSV and the bytes."""
    return expected_photos


@pytest.fixture
def exact() -> Callable[..., Dump]:
    """``exact(settings, root, metadata, embedder) -> Dump``, asserting the store is exactly right."""
    return check_exact


# -- the child worker ----------------------------------------------------------------------------------------


@dataclass
class Child:
    proc: subprocess.Popen[str]
    marker: Path
    release: Path

    def wait_marker(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the child stopped at its hang point; its acknowledged-write counts."""
        import time

        t0 = time.monotonic()
        while not self.marker.exists() or not self.marker.read_text().endswith("\n"):
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                code = self.proc.returncode
                raise AssertionError(f"child exited {code} before its hang point:\n{out}\n{err}")
            if time.monotonic() - t0 > timeout:
                raise AssertionError("child never reached its hang point")
            time.sleep(0.05)
        return dict(json.loads(self.marker.read_text()))


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """``spawn(demo, settings, hang=None) -> Child``: ingestion in another process (killed at teardown)."""
    procs: list[subprocess.Popen[str]] = []

    def start(demo: Path, settings: Settings, hang: dict[str, Any] | None = None) -> Child:
        n = len(procs)
        marker, release = tmp_path / f"marker{n}", tmp_path / f"release{n}"
        spec = {
            "photos_dir": str(demo),
            "metadata": str(demo / "metadata.csv"),
            "store_path": str(settings.store_path),
            "backend": settings.store_backend,
            "write_batch_size": settings.ingest.write_batch_size,
            "hang": None if hang is None else {**hang, "marker": str(marker)},
            "release": str(release),
        }
        spec_path = tmp_path / f"spec{n}.json"
        spec_path.write_text(json.dumps(spec))
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(spec_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
        )
        procs.append(proc)
        return Child(proc, marker, release)

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)


# -- network stand-ins ---------------------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    """A localhost TCP port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FakeQdrant:
    """A local HTTP server standing in for a Qdrant that answers ``status`` to everything."""

    url: str
    status: int
    seen_headers: list[dict[str, str]]


@pytest.fixture
def fake_qdrant() -> Iterator[Callable[[int], FakeQdrant]]:
    """``fake_qdrant(status) -> FakeQdrant``. Hostile on purpose: the body echoes the request's headers (as a
    badly configured proxy might), so any code path that prints a response body would print the key."""
    servers: list[http.server.HTTPServer] = []

    def start(status: int) -> FakeQdrant:
        seen: list[dict[str, str]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                seen.append(headers)
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                body = json.dumps(
                    {"status": {"error": f"rejected; request headers were {headers}"}, "time": 0.0}
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815 - the stdlib's names

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        return FakeQdrant(url=url, status=status, seen_headers=seen)

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()
