"""The store cannot be used at start: a closed port, a server that refuses the API key, a URL that is not a
Qdrant, an unusable or busy embedded folder. Each command ends with exit status 2 and one line naming the
place, no traceback, nothing written, and the API key never printed or logged (not even with -vv).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.settings import Settings
from ingestion.report import IngestReport
from matcher.cli import main

SECRET = "sk-live-5b8e0c1f9a7d4e2b"  # what the test sets as MATCHER_QDRANT_API_KEY
COMMANDS = ["ingest", "recommend", "delete-user", "stats"]
ENCODER_LOADS: list[int] = []  # one entry per encoder load in the current test


def argv(command: str, demo: Path, report: Path) -> list[str]:
    if command == "ingest":
        return ["ingest", str(demo), "--metadata", str(demo / "metadata.csv"), "--report", str(report)]
    if command in ("recommend", "delete-user"):
        return [command, "user_001"]
    return [command]


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pixel_embedder: Any, caplog: pytest.LogCaptureFixture
) -> Callable[..., tuple[int, str, str, str]]:
    """``cli(args, capsys, url=None) -> (status, stdout, stderr, logs)``: ``matcher -vv ARGS`` in this
    process, with the key in the environment, every log record at DEBUG captured, and the encoder stubbed by
    the numpy one (the store is what fails here)."""
    import ingestion.job

    def load(settings: Any) -> Any:
        ENCODER_LOADS.append(1)
        return pixel_embedder

    ENCODER_LOADS.clear()
    monkeypatch.setattr(ingestion.job, "_load_encoder", load)
    monkeypatch.setenv("MATCHER_QDRANT_API_KEY", SECRET)
    monkeypatch.setenv("MATCHER_STORE_PATH", str(tmp_path / "embedded-store-never-made"))
    caplog.set_level(logging.DEBUG)

    def run(
        args: list[str], capsys: pytest.CaptureFixture[str], url: str | None = None
    ) -> tuple[int, str, str, str]:
        if url is not None:
            monkeypatch.setenv("MATCHER_QDRANT_URL", url)
        caplog.clear()
        status = main(["-vv", "--no-progress", *args])
        out, err = capsys.readouterr()
        logs = caplog.text + "\n".join(str(r.args) for r in caplog.records)
        return status, out, err, logs

    return run


def assert_one_clean_line(command: str, out: str, err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"matcher {command}: error: "), line
    assert "Traceback" not in err and out == "", (out, err)
    for needle in needles:
        assert needle in line, (needle, line)
    return line


@pytest.mark.parametrize("command", COMMANDS)
def test_closed_port_exit_2_one_line_naming_the_url(command, cli, capsys, closed_port, demo, tmp_path):
    url = f"http://127.0.0.1:{closed_port}"
    report = tmp_path / "report.json"
    status, out, err, logs = cli(argv(command, demo, report), capsys, url=url)
    assert status == 2
    assert_one_clean_line(command, out, err, url, "does not answer")
    assert SECRET not in out + err + logs
    # Nothing written: no embedded store made as a fallback; the ingest report says so.
    assert not (tmp_path / "embedded-store-never-made").exists()
    assert not ENCODER_LOADS, "the encoder (minutes for the 2B model) was loaded before the store was tried"
    if command == "ingest":
        rep = IngestReport.read(report)
        assert not rep.completed and rep.counts.photos_stored == 0 and "StoreUnavailable" in (rep.error or "")
        assert SECRET not in report.read_text()


@pytest.mark.parametrize(
    ("status_code", "needle"),
    [
        (401, "refused the API key (HTTP 401)"),
        (403, "refused the API key (HTTP 403)"),
        (500, "does not answer"),
    ],
)
@pytest.mark.parametrize("command", COMMANDS)
def test_server_that_refuses_is_named_and_the_key_never_shows(
    command, status_code, needle, cli, capsys, fake_qdrant, demo, tmp_path
) -> None:
    server = fake_qdrant(status_code)
    report = tmp_path / "report.json"
    status, out, err, logs = cli(argv(command, demo, report), capsys, url=server.url)
    assert status == 2
    assert_one_clean_line(command, out, err, server.url, needle)
    # The key really was sent (so its absence from the output means something) ...
    assert server.seen_headers and all(h.get("api-key") == SECRET for h in server.seen_headers)
    # ... and it is nowhere we show or keep: stdout, stderr, DEBUG logs, the run report.
    assert SECRET not in out + err + logs
    if command == "ingest":
        assert SECRET not in report.read_text() and not IngestReport.read(report).completed
        assert not ENCODER_LOADS


@pytest.mark.parametrize("status_code", [404, 400])
def test_url_of_something_else_is_a_clear_error_not_a_traceback(status_code, cli, capsys, fake_qdrant):
    """MATCHER_QDRANT_URL pointing at another HTTP service (answers 404 or 400 to Qdrant's API)."""
    server = fake_qdrant(status_code)
    status, out, err, logs = cli(["stats"], capsys, url=server.url)
    assert status == 2
    assert_one_clean_line("stats", out, err, server.url)
    assert SECRET not in out + err + logs


def test_password_in_the_url_is_not_shown(cli, capsys, closed_port) -> None:
    url = f"http://admin:{SECRET}@127.0.0.1:{closed_port}"
    status, out, err, logs = cli(["stats"], capsys, url=url)
    assert status == 2
    assert_one_clean_line("stats", out, err, f"http://127.0.0.1:{closed_port}")
    assert SECRET not in out + err + logs


def run_cli_process(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``matcher ARGS`` as its own process: the real logging set-up of ``-vv`` (root handler at DEBUG)."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "matcher.cli", *args], env=full, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("where", ["closed", "401"])
def test_debug_logging_of_a_real_process_never_prints_the_key(where, closed_port, fake_qdrant, tmp_path):
    url = f"http://127.0.0.1:{closed_port}" if where == "closed" else fake_qdrant(int(where)).url
    env = {"MATCHER_QDRANT_URL": url, "MATCHER_QDRANT_API_KEY": SECRET}
    env["MATCHER_STORE_PATH"] = str(tmp_path / "s")
    proc = run_cli_process(["-vv", "recommend", "user_001"], env)
    assert proc.returncode == 2, proc.stderr
    assert "DEBUG" in proc.stderr, "-vv did not turn debug logging on, so this test would prove nothing"
    assert SECRET not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"matcher recommend: error: the Qdrant server at {url}"), last


def test_embedded_store_folder_that_cannot_be_made(cli, capsys, monkeypatch, tmp_path, demo) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.delenv("MATCHER_QDRANT_URL", raising=False)
    report = tmp_path / "r.json"
    status, out, err, _ = cli(["--store", str(blocker / "qdrant"), *argv("ingest", demo, report)], capsys)
    assert status == 2
    assert_one_clean_line("ingest", out, err, str(blocker / "qdrant"), "cannot open the store folder")
    assert blocker.read_text() == "not a folder" and not IngestReport.read(report).completed


def test_second_ingestion_on_the_same_embedded_store_is_refused(
    spawn: Callable[..., Any], demo, rel_settings: Settings, cli, capsys, monkeypatch, exact, pixel_embedder
) -> None:
    """Run A holds the store (stopped after its first photo write); run B, and a recommend, are refused with a
    clear message and write nothing; A, let go, finishes and the store is exactly right."""
    a = spawn(demo, rel_settings, hang={"collection": "photos", "call": 1, "when": "after"})
    acked = a.wait_marker()["acked"]
    assert acked["photos"] == rel_settings.ingest.write_batch_size
    monkeypatch.delenv("MATCHER_QDRANT_URL", raising=False)
    store = ["--store", str(rel_settings.store_path)]
    for args, command in (
        ([*store, *argv("ingest", demo, rel_settings.store_path.parent / "b.json")], "ingest"),
        ([*store, "recommend", "user_001"], "recommend"),
        ([*store, "delete-user", "user_001"], "delete-user"),
    ):
        status, out, err, _ = cli(args, capsys)
        assert status == 2
        assert_one_clean_line(command, out, err, str(rel_settings.store_path), "in use by another process")
    a.release.touch()
    out, err = a.proc.communicate(timeout=120)
    assert a.proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["completed"] is True
    exact(rel_settings, demo, demo / "metadata.csv", pixel_embedder)
