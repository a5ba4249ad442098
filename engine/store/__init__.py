"""The store seam (``Store``) and ``open_store(settings)``, which picks the backend."""

from __future__ import annotations

from engine.errors import StoreNotFound
from engine.settings import Settings
from engine.store.base import Point, Query, RecommendQuery, ScoredPoint, Store, StoreInfo


def open_store(settings: Settings, *, create: bool = True) -> Store:
    """Open the store the settings name: a Qdrant server if ``qdrant_url`` is set, else the embedded one.

    ``create=False`` is for commands that only read (or delete from) a store: an embedded store whose folder
    does not exist raises ``StoreNotFound`` instead of being made, so a mistyped path leaves nothing behind.
    Raises ``StoreUnavailable`` (the server does not answer) or ``StoreLocked`` (another process holds
    the embedded folder).
    """
    backend = settings.resolved_backend
    if not create and backend != "server":
        check_store_exists(settings)
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


__all__ = ["Point", "Query", "RecommendQuery", "ScoredPoint", "Store", "StoreInfo", "check_store_exists", "open_store"]
