"""End to end through the CLI, as an operator runs it: make demo data -> ingest (the real tiny Qwen3-VL
encoder) -> stats -> recommend -> delete-user, on the embedded Edge store and, where a Docker engine answers,
on a real Qdrant server started by testcontainers from the image docker/compose.yaml pins.
"""

from __future__ import annotations

import ast
import csv
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingestion.report import IngestReport
from matcher.cli import main

ROOT = Path(__file__).resolve().parent
API_KEY = "e2e-" + uuid.uuid4().hex


def pinned_image() -> str:
    """``QDRANT_SERVER_IMAGE`` of tests/engine/conftest.py (read, not imported: one pin for every test)."""
    tree = ast.parse((ROOT / "engine" / "conftest.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "QDRANT_SERVER_IMAGE" for t in node.targets):
            return str(ast.literal_eval(node.value))
    raise AssertionError("tests/engine/conftest.py has no QDRANT_SERVER_IMAGE")


@pytest.fixture(scope="session")
def e2e_qdrant_url() -> Iterator[str]:
    """A Qdrant server (the pinned image, API key required) for this module; skipped without Docker."""
    try:
        from docker.errors import DockerException
        from testcontainers.community.qdrant import QdrantContainer
    except ImportError as exc:  # pragma: no cover - dev extras missing
        pytest.skip(f"testcontainers is not installed: {exc}")
    try:
        container = QdrantContainer(pinned_image(), api_key=API_KEY)
        container.start()
    except DockerException as exc:
        pytest.skip(f"no Docker engine: {exc}")
    try:
        yield f"http://{container.rest_host_address}"
    finally:
        container.stop()


# Edge: ~25-40 s on the shared 2-core machine (two encoder loads, a demo population), so with the slow tests;
# the server run is marked integration only, so the default run shows why it was skipped.
@pytest.fixture(
    params=[pytest.param("edge", marks=pytest.mark.slow), pytest.param("server", marks=pytest.mark.integration)]
)
def backend_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Environment for one backend, as an operator would set it; the tiny encoder at a small budget."""
    for key in ("MATCHER_QDRANT_URL", "MATCHER_QDRANT_API_KEY", "MATCHER_STORE_BACKEND"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MATCHER_ENCODER__PIXEL_BUDGET", str(64 * 64))
    monkeypatch.setenv("MATCHER_ENCODER__DIM", "32")
    monkeypatch.setenv("MATCHER_ENCODER__DEVICE", "cpu")
    monkeypatch.setenv("MATCHER_ENCODER__DTYPE", "float32")
    monkeypatch.setenv("MATCHER_PROGRESS", "false")
    if request.param == "server":
        monkeypatch.setenv("MATCHER_QDRANT_URL", request.getfixturevalue("e2e_qdrant_url"))
        monkeypatch.setenv("MATCHER_QDRANT_API_KEY", API_KEY)
        monkeypatch.setenv("MATCHER_COLLECTION_PREFIX", f"e2e{uuid.uuid4().hex[:8]}_")
    else:
        monkeypatch.setenv("MATCHER_STORE_PATH", str(tmp_path / "qdrant"))
    return str(request.param)


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def compatible(a: dict[str, str], b: dict[str, str]) -> bool:
    """Both ways: b's gender is among a's sought genders and b's age inside a's window (and the reverse)."""

    def wants(x: dict[str, str], y: dict[str, str]) -> bool:
        seeking = x["seeking"].split("|") if x["seeking"] else None
        lo, hi = int(x["age_min"] or 18), int(x["age_max"] or 120)
        return (seeking is None or y["gender"] in seeking) and lo <= int(y["age"]) <= hi

    return wants(a, b) and wants(b, a)


def test_demo_ingest_recommend_delete(backend_env: str, request: pytest.FixtureRequest, tmp_path: Path, capsys) -> None:
    # Asked for here, not as an argument: a session fixture would be built before the server skip is known.
    tiny_checkpoint: Path = request.getfixturevalue("tiny_checkpoint")
    demo = tmp_path / "demo"
    assert main(["make-demo-data", str(demo), "--users", "12", "--seed", "3"]) == 0
    capsys.readouterr()
    with open(demo / "metadata.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    profiles = {r["user_id"]: r for r in rows}
    assert len(profiles) == 12

    report = tmp_path / "ingest.json"
    args = ["ingest", str(demo), "--metadata", str(demo / "metadata.csv"), "--encoder", str(tiny_checkpoint)]
    assert main([*args, "--report", str(report)]) == 0
    rep = IngestReport.read(report)
    assert rep.completed and rep.store_backend == backend_env and not rep.rejected
    assert rep.counts.photos_stored == len(rows) and rep.counts.users_written == 12
    capsys.readouterr()

    stats = run_json(capsys, "stats", "--json")
    assert (stats["photos"], stats["users"], stats["dim"]) == (len(rows), 12, 32)

    asked = sorted(profiles)[:3]
    for uid in asked:
        matches = run_json(capsys, "recommend", uid, "--k", "5", "--json")
        ids = [m["user_id"] for m in matches]
        assert len(ids) == len(set(ids)) <= 5 and uid not in ids
        assert [m["rank"] for m in matches] == list(range(1, len(matches) + 1))
        assert all(a["score"] >= b["score"] for a, b in zip(matches, matches[1:], strict=False))
        assert all(compatible(profiles[uid], profiles[m]) for m in ids), uid

    # Erase someone a recommendation named: gone from the store and from everyone's recommendations.
    victim = next(m["user_id"] for uid in asked for m in run_json(capsys, "recommend", uid, "--json"))
    assert main(["delete-user", victim]) == 0
    capsys.readouterr()
    stats = run_json(capsys, "stats", "--json")
    n_victim = sum(r["user_id"] == victim for r in rows)
    assert (stats["photos"], stats["users"]) == (len(rows) - n_victim, 11)
    for uid in (u for u in asked if u != victim):
        assert victim not in {m["user_id"] for m in run_json(capsys, "recommend", uid, "--k", "11", "--json")}
    assert main(["recommend", victim]) == 2  # UserNotFound: a clear one-line error
    assert f"'{victim}' is not in the store" in capsys.readouterr().err
    assert main(["delete-user", victim]) == 1

    # Re-running the ingestion puts the erased user back from the same files, nothing else changes.
    assert main([*args, "--report", str(report)]) == 0
    rep = IngestReport.read(report)
    assert rep.counts.photos_stored == n_victim and rep.counts.photos_skipped == len(rows) - n_victim
    capsys.readouterr()
    stats = run_json(capsys, "stats", "--json")
    assert (stats["photos"], stats["users"]) == (len(rows), 12)
