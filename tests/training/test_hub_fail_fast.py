"""A hub id that cannot load fails within seconds with one clear line, instead of ~47 s of retry warnings
printed twice each. The hub is played by a local port: a closed one (no network) or a small HTTP server that
answers 404 RepoNotFound as the real hub does for a mistyped id. Each case runs ``matcher`` in a subprocess,
since huggingface_hub reads its endpoint and cache location from the environment at import."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

MISTYPED = "Qwen/Qwen3-VL-2B-Instrct"


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now: every request is refused at once


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "face.jpg"
    Image.new("RGB", (64, 64), (200, 120, 90)).save(path)
    return path


def run_matcher(args: list[str], tmp_path: Path, endpoint: str) -> tuple[int, str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=endpoint, MATCHER_PROGRESS="false", HF_TOKEN="")
    env.pop("HF_TOKEN")
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "matcher.cli", *args], env=env, capture_output=True, text=True, timeout=180
    )
    return done.returncode, done.stderr, time.monotonic() - start


def test_mistyped_hub_id_without_network_fails_fast_with_one_line(tmp_path: Path, image: Path) -> None:
    code, err, seconds = run_matcher(["embed", str(image), "--encoder", MISTYPED], tmp_path, closed_port_url())
    assert code == 2, err
    assert seconds < 30, f"took {seconds:.0f} s (the hub's retries alone take ~46 s)"
    assert "Retrying" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"matcher embed: error: '{MISTYPED}' is not in the local Hugging Face cache")
    assert "cannot be reached" in lines[0]


class _NoSuchRepo(http.server.BaseHTTPRequestHandler):
    """Answers every request as the hub answers one for a model it does not have."""

    def _answer(self) -> None:
        body = b'{"error":"Repository not found"}'
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer  # noqa: N815 - http.server's naming

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's signature
        pass


@pytest.fixture
def hub_without_the_model() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoSuchRepo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_mistyped_hub_id_says_the_hub_has_no_such_model(
    tmp_path: Path, image: Path, hub_without_the_model: str
) -> None:
    code, err, seconds = run_matcher(["embed", str(image), "--encoder", MISTYPED], tmp_path, hub_without_the_model)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert f"the Hugging Face hub has no model '{MISTYPED}' (mistyped?" in lines[0]
    assert seconds < 30


def test_cached_model_loads_without_network_and_warns_once(tmp_path: Path, image: Path, tiny_checkpoint: Path) -> None:
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-qwen3-vl"
    shutil.copytree(tiny_checkpoint, repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc", encoding="utf-8")
    code, err, seconds = run_matcher(
        ["embed", str(image), "--encoder", "someone/tiny-qwen3-vl", "--pixel-budget", "4096", "--dim", "16"],
        tmp_path,
        closed_port_url(),
    )
    assert code == 0, err
    assert seconds < 60
    warnings = [line for line in err.splitlines() if "cannot be reached" in line]
    assert len(warnings) == 1, err
    assert "using the cached copy of someone/tiny-qwen3-vl" in warnings[0]
    assert "Retrying" not in err


def test_a_hub_warning_is_printed_once() -> None:
    code = (
        "import logging, huggingface_hub\n"
        "from matcher.cli import configure_logging\n"
        "configure_logging(0)\n"
        "logging.getLogger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')\n"
        "logging.getLogger('matcher.demo').warning('ours')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("Retrying in 1s") == 1, done.stderr
    assert done.stderr.count("ours") == 1, done.stderr
