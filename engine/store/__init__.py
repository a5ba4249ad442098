"""The store seam (``Store``) and ``open_store(settings)``, which picks the backend."""

from __future__ import annotations

from pathlib import Path

from engine.errors import InvalidInput, StoreNotFound
from engine.settings import Settings
from engine.store.base import Point, Query, RecommendQuery, ScoredPoint, Store, StoreInfo


def open_store(settings: Settings, *, create: bool = True) -> Store:
    """Open the store the settings name: a Qdrant server if ``qdrant_url`` is set, else the embedded one.

    ``create=False`` is for commands that only read (or delete from) a store: an embedded store whose folder
    does not exist raises ``StoreNotFound`` instead of being made, so a mistyped path leaves nothing behind.
    Raises ``StoreUnavailable`` (the server does not answer), ``StoreLocked`` (another process holds
    the embedded folder) or ``InvalidInput`` (the folder holds the other embedded backend's store).
    """
    backend = settings.resolved_backend
    if not create and backend != "server":
        check_store_exists(settings)
    if backend in ("edge", "local"):
        _check_folder_kind(Path(settings.store_path), backend)
    if backend == "server":
        from engine.store.client import QdrantClientStore

        return QdrantClientStore.connect(settings)
    if backend == "local":
        from engine.store.client import QdrantClientStore

        return QdrantClientStore.embedded(settings)
    from engine.store.edge import EdgeStore

    return EdgeStore.open(settings)


def check_store_exists(settings: Settings) -> None:
    """Raise ``StoreNotFound`` naming ``settings.store_path`` unless it is an existing folder."""
    path = settings.store_path
    if path.is_dir():
        return
    what = "is not a folder" if path.exists() else "does not exist"
    raise StoreNotFound(
        f"no store at {path}: the folder {what} (set by --store or MATCHER_STORE_PATH); check the path, "
        "or make a store first with 'matcher ingest'"
    )


def folder_kind(path: Path) -> str | None:
    """Which embedded store ``path`` holds: ``"edge"``, ``"local"`` (qdrant-client local mode), or None
    (missing, empty, or neither). Reads names only, opens nothing."""
    if (path / "meta.json").is_file() or (path / "collection").is_dir():
        return "local"
    if path.is_dir():
        for child in path.iterdir():
            if child.is_dir() and ((child / "edge_config.json").is_file() or (child / "segments").is_dir()):
                return "edge"
    return None


def _check_folder_kind(path: Path, backend: str) -> None:
    # Opened with the other backend, a store reads as empty and the next ingestion builds a second store
    # beside the first in the same folder: refuse before anything is written.
    kind = folder_kind(path)
    if kind is not None and kind != backend:
        names = {"edge": "an Edge store (the default, --backend edge)", "local": "a qdrant-client local-mode store"}
        raise InvalidInput(
            f"the store folder {path} holds {names[kind]}, not {names[backend]}: open it with --backend {kind} "
            f"(MATCHER_STORE_BACKEND={kind}), or point MATCHER_STORE_PATH at another folder"
        )


__all__ = [
    "Point",
    "Query",
    "RecommendQuery",
    "ScoredPoint",
    "Store",
    "StoreInfo",
    "check_store_exists",
    "folder_kind",
    "open_store",
]
