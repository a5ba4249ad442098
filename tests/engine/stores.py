"""The body of the engine tests' store fixtures (``conftest.reciprocity_db``, ``test_recommend.db``), in one
place: an empty embedded store set up for a vector size, with some ``recommend`` settings changed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from engine.settings import Settings
from engine.store import Store, open_store


def embedded_store(tmp_path: Path, backend: str, dim: int, **recommend: object) -> Iterator[tuple[Store, Settings]]:
    """An empty embedded store (``backend``) under ``tmp_path`` set up for ``dim``-d vectors, with these
    ``recommend`` settings changed; closed after. The body of the engine tests' store fixtures."""
    settings = Settings(store_path=tmp_path / "q", store_backend=backend, progress=False)
    settings = settings.model_copy(update={"recommend": settings.recommend.model_copy(update=recommend)})
    store = open_store(settings)
    store.setup("test-encoder", dim)
    try:
        yield store, settings
    finally:
        store.close()
