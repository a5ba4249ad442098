"""The API key is scrubbed from every log record, whatever logger emits it, and from URLs in messages."""

from __future__ import annotations

import http.server
import io
import logging
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from engine.redaction import redact_url, register_secret


@pytest.fixture
def root_at_debug() -> Iterator[io.StringIO]:
    """Everything logged anywhere, formatted with tracebacks, as a handler on the root logger sees it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield out
    root.removeHandler(handler)
    root.setLevel(old)


def test_secret_is_scrubbed_from_records_of_any_logger(root_at_debug: io.StringIO) -> None:
    key = "sk-" + secrets.token_hex(12)
    register_secret(key)
    headers = [(b"content-type", b"application/json"), (b"x-echo-api-key", key.encode())]
    logging.getLogger("httpcore.http11").debug("receive_response_headers.complete return_value=%r", headers)
    logging.getLogger("httpx").info("HTTP Request: GET http://q:6333/collections?api-key=%s 401", key)
    try:
        raise RuntimeError(f"server said: your key {key} is wrong")
    except RuntimeError:
        logging.getLogger("some.library").exception("call failed")
    logging.getLogger("some.library").warning("nothing secret in %s", "this one")
    text = root_at_debug.getvalue()
    assert key not in text
    assert "b'x-echo-api-key', b'***'" in text and "api-key=*** 401" in text and "your key *** is wrong" in text
    assert "nothing secret in this one" in text


def test_a_record_without_a_secret_is_left_as_made(caplog: pytest.LogCaptureFixture) -> None:
    register_secret("sk-" + secrets.token_hex(12))
    with caplog.at_level(logging.INFO):
        logging.getLogger("x").info("count %d", 3)
    assert caplog.records[-1].args == (3,)


def test_urls_in_messages_lose_passwords_and_query_values() -> None:
    assert redact_url("http://u:pw@h:6333/p?api-key=abcd&x=1") == "http://h:6333/p?api-key=***&x=***"
    assert redact_url("https://h/") == "https://h/"


def test_a_key_in_the_url_query_is_not_echoed_in_the_error(capsys: pytest.CaptureFixture[str], monkeypatch, tmp_path):
    import socket

    from matcher.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = "qk-" + secrets.token_hex(12)
    monkeypatch.setenv("MATCHER_QDRANT_URL", f"http://127.0.0.1:{port}/?api-key={key}")
    monkeypatch.setenv("MATCHER_STORE_PATH", str(tmp_path / "s"))
    assert main(["stats"]) == 2
    err = capsys.readouterr().err
    assert key not in err
    assert f"http://127.0.0.1:{port}/?api-key=***" in err


@pytest.fixture
def echoing_server() -> Iterator[str]:
    """A server answering 401 that echoes the request's api-key header back in a response header."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = b'{"status": {"error": "no"}, "time": 0.0}'
            self.send_response(401)
            self.send_header("X-Echo-Api-Key", self.headers.get("api-key", ""))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _answer  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_vv_never_prints_a_key_the_server_echoes_in_a_header(echoing_server: str, tmp_path) -> None:
    key = "ek-" + secrets.token_hex(12)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MATCHER_QDRANT_URL": echoing_server,
        "MATCHER_QDRANT_API_KEY": key,
        "MATCHER_STORE_PATH": str(tmp_path / "s"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "matcher.cli", "-vv", "recommend", "user_001"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    # The echoed header was logged (httpcore at DEBUG), so its absence of the key means something.
    assert "x-echo-api-key" in proc.stderr.lower(), proc.stderr[-2000:]
    assert key not in proc.stdout + proc.stderr
