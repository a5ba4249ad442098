"""Static checks of docker/Dockerfile and docker/compose.yaml (no Docker engine needed), plus one live check:
the compose health check, run by the shell against a local HTTP server that answers like Qdrant's /readyz.

What could go wrong and is caught here: the compose file and the test fixture drifting to different Qdrant
versions, an unpinned ``latest`` tag, a literal API key committed, the worker starting before Qdrant is
ready, the image running as root, a CUDA base by default, a health check that never (or always) passes.
"""

from __future__ import annotations

import ast
import http.server
import re
import shlex
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / "docker" / "Dockerfile.dockerignore"
ENGINE_CONFTEST = ROOT / "tests" / "engine" / "conftest.py"

EXACT_TAG = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+$")
INTERPOLATION = re.compile(r"^\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?P<op>:?[?-])(?P<rest>[^}]*)\}$")


def fixture_image() -> str:
    """``QDRANT_SERVER_IMAGE`` as written in tests/engine/conftest.py (read, not imported)."""
    tree = ast.parse(ENGINE_CONFTEST.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "QDRANT_SERVER_IMAGE" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, str)
            return value
    raise AssertionError(f"{ENGINE_CONFTEST}: no QDRANT_SERVER_IMAGE assignment")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and "services" in data
    return data


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "KEY=value" list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        full = (buf + stripped).strip()
        buf = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


# -- compose -------------------------------------------------------------------------------------------------


def test_compose_pins_the_image_the_tests_run(compose: dict[str, Any]) -> None:
    image = compose["services"]["qdrant"]["image"]
    assert EXACT_TAG.match(image), f"{image!r} is not pinned to an exact version"
    assert image == fixture_image(), "docker/compose.yaml and tests/engine/conftest.py name different images"


def test_compose_qdrant_keeps_its_data_in_a_volume(compose: dict[str, Any]) -> None:
    mounts = compose["services"]["qdrant"]["volumes"]
    storage = [m for m in mounts if str(m).split(":")[1:2] == ["/qdrant/storage"]]
    assert storage, "no volume on /qdrant/storage: the data would die with the container"
    name = str(storage[0]).split(":")[0]
    assert name in (compose.get("volumes") or {}), f"volume {name!r} is not declared (a bind mount?)"


def test_compose_qdrant_has_a_health_check(compose: dict[str, Any]) -> None:
    hc = compose["services"]["qdrant"]["healthcheck"]
    assert hc["test"][0] in ("CMD", "CMD-SHELL") and any("/readyz" in str(x) for x in hc["test"][1:])
    assert int(hc["retries"]) >= 3 and str(hc["interval"]).endswith("s")


def test_compose_worker_waits_for_a_healthy_qdrant(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["depends_on"]["qdrant"]["condition"] == "service_healthy"
    env = env_of(worker)
    assert env["MATCHER_QDRANT_URL"] == "http://qdrant:6333"
    assert worker["build"]["dockerfile"] == "docker/Dockerfile"
    build = worker["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_api_key_comes_from_the_environment(compose: dict[str, Any]) -> None:
    server_key = env_of(compose["services"]["qdrant"])["QDRANT__SERVICE__API_KEY"]
    worker_key = env_of(compose["services"]["worker"])["MATCHER_QDRANT_API_KEY"]
    names = set()
    for value in (server_key, worker_key):
        m = INTERPOLATION.match(value)
        assert m, f"{value!r} is not a ${{VAR}} reference: a literal key would be committed"
        # ':?' (required): compose refuses to start rather than run a server with an empty key.
        assert m.group("op") == ":?", f"{value!r}: use ${{VAR:?message}}"
        names.add(m.group("name"))
    assert len(names) == 1, "the server and the worker read the key from different variables"
    # No other environment value anywhere looks like a secret written in clear.
    for svc in compose["services"].values():
        for key, value in env_of(svc).items():
            if re.search(r"KEY|TOKEN|SECRET|PASSWORD", key):
                assert INTERPOLATION.match(value), f"{key} has a literal value"


def test_compose_publishes_qdrant_on_loopback_only(compose: dict[str, Any]) -> None:
    for port in compose["services"]["qdrant"].get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"{port!r} exposes Qdrant on every interface"


# -- Dockerfile ----------------------------------------------------------------------------------------------


def test_dockerfile_base_is_a_build_argument_cpu_by_default() -> None:
    ins = dockerfile_instructions()
    froms = [(i, a) for i, (word, a) in enumerate(ins) if word == "FROM"]
    assert len(froms) == 1 and froms[0][1] == "${BASE_IMAGE}"
    base_args = [a for word, a in ins[: froms[0][0]] if word == "ARG" and a.startswith("BASE_IMAGE=")]
    assert base_args, "ARG BASE_IMAGE=... must come before FROM"
    default = base_args[0].split("=", 1)[1]
    assert "cuda" not in default.lower() and default.startswith("python:3.11"), default
    torch = [a for word, a in ins if word == "RUN" and "torch==" in a]
    assert torch and "${TORCH_VERSION}" in torch[0] and "--index-url ${TORCH_INDEX}" in torch[0]
    cpu_index = "TORCH_INDEX=https://download.pytorch.org/whl/cpu"
    assert any(word == "ARG" and a.startswith(cpu_index) for word, a in ins)


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [a for word, a in dockerfile_instructions() if word == "USER"]
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    # The user must exist: created with that uid (or name) before it is switched to.
    created = " ".join(a for word, a in dockerfile_instructions() if word == "RUN" and "useradd" in a)
    assert re.search(rf"--uid {user}\b", created) or re.search(rf"useradd\b.*\b{user}\b", created), created


def test_dockerfile_entry_point_is_the_matcher_cli() -> None:
    entry = [a for word, a in dockerfile_instructions() if word == "ENTRYPOINT"]
    assert entry and yaml.safe_load(entry[-1]) == ["matcher"], entry  # exec form: signals reach matcher
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^matcher = "matcher\.cli:main"$', pyproject, re.MULTILINE)


def test_dockerfile_copies_what_exists_and_the_ignore_file_lets_it_through() -> None:
    ignore = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    reincluded = {line[1:].split("/")[0] for line in ignore if line.startswith("!")}
    assert "**" in ignore, "the ignore file should exclude everything by default"
    assert "**/*.safetensors" in ignore
    for word, args in dockerfile_instructions():
        if word != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = shlex.split(args)
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert src.split("/")[0] in reincluded, f"COPY {src}: excluded by {DOCKERIGNORE.name}"


# -- the health check, run for real --------------------------------------------------------------------------


class _Readyz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        code = self.status if self.path == "/readyz" else 404
        body = b"all shards are ready" if code == 200 else b"not ready"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass


@pytest.fixture
def readyz_server() -> Iterator[tuple[http.server.HTTPServer, type[_Readyz]]]:
    handler = type("Handler", (_Readyz,), {"status": 200})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(not Path("/bin/bash").exists(), reason="needs bash, as the Qdrant image")
def test_health_check_passes_on_ready_and_fails_otherwise(compose: dict[str, Any], readyz_server) -> None:
    server, handler = readyz_server
    kind, command = compose["services"]["qdrant"]["healthcheck"]["test"][:2]
    assert kind == "CMD-SHELL"
    port = server.server_address[1]
    local = command.replace("127.0.0.1/6333", f"127.0.0.1/{port}")
    assert local != command, "the health check does not probe 127.0.0.1:6333"

    def run() -> int:
        return subprocess.run(["/bin/sh", "-c", local], timeout=10, capture_output=True).returncode

    assert run() == 0
    handler.status = 503  # Qdrant still loading shards
    assert run() != 0
    server.shutdown()
    server.server_close()  # nothing listening: connection refused
    assert run() != 0
