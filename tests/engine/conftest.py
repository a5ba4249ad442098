"""Fixtures for the engine tests: a store per backend (embedded Edge, qdrant-client local mode, and a real
Qdrant server in Docker through testcontainers when a Docker engine answers)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from engine.settings import Settings
from engine.store import Store, open_store
from tests.engine.stores import embedded_store

# The Qdrant server the store is tested against; qdrant-client 1.20 talks to servers 1.19-1.21.
# docker/compose.yaml pins the same image.
QDRANT_SERVER_IMAGE = "qdrant/qdrant:v1.20.0"
# A key the test server requires, so the API-key path of QdrantClientStore.connect is what gets tested.
QDRANT_TEST_API_KEY = "test-" + uuid.uuid4().hex

BACKENDS = ["edge", "local", pytest.param("server", marks=pytest.mark.integration)]


@dataclass(frozen=True)
class QdrantServer:
    url: str
    api_key: str


@pytest.fixture(scope="session")
def qdrant_server() -> Iterator[QdrantServer]:
    """A real Qdrant server (``QDRANT_SERVER_IMAGE``) for the session; skipped without a Docker engine."""
    try:
        from docker.errors import DockerException
        from testcontainers.community.qdrant import QdrantContainer
    except ImportError as exc:  # pragma: no cover - dev extras missing
        pytest.skip(f"testcontainers is not installed: {exc}")
    try:  # the constructor already asks the Docker engine for its version
        container = QdrantContainer(QDRANT_SERVER_IMAGE, api_key=QDRANT_TEST_API_KEY)
        container.start()
    except DockerException as exc:
        pytest.skip(f"no Docker engine: {exc}")
    try:
        yield QdrantServer(url=f"http://{container.rest_host_address}", api_key=QDRANT_TEST_API_KEY)
    finally:
        container.stop()


@dataclass
class StoreFactory:
    """Opens (and re-opens) one test's store on one backend; every open store is closed at teardown."""

    backend: str
    settings: Settings
    opened: list[Store]

    def open(self, **update: object) -> Store:
        settings = self.settings.model_copy(update=update) if update else self.settings
        store = open_store(settings)
        self.opened.append(store)
        return store


@pytest.fixture(params=BACKENDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A ``StoreFactory`` per backend. Server tests share one server and keep apart by collection prefix."""
    backend: str = request.param
    if backend == "server":
        server: QdrantServer = request.getfixturevalue("qdrant_server")
        settings = Settings(
            store_backend="server",
            qdrant_url=server.url,
            qdrant_api_key=SecretStr(server.api_key),
            collection_prefix=f"t{uuid.uuid4().hex[:10]}_",
            progress=False,
        )
    else:
        settings = Settings(
            store_backend=backend,  # type: ignore[arg-type]  # one of BACKENDS
            store_path=tmp_path / f"qdrant-{backend}",
            progress=False,
        )
    factory = StoreFactory(backend=backend, settings=settings, opened=[])
    try:
        yield factory
    finally:
        for store in reversed(factory.opened):
            store.close()


@pytest.fixture(params=["edge", "local"])
def reciprocity_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Settings]]:
    """An empty store and its settings, per embedded backend, for the reciprocity passes' tests: set up for
    ``reciprocity_population.DIM``-d vectors, with ``recommend.reciprocity_k = reciprocity_population.K``."""
    from tests.engine.reciprocity_population import DIM, K

    yield from embedded_store(tmp_path, request.param, DIM, reciprocity_k=K)
