"""The store seam (``Store``) and ``open_store(settings)``, which picks the backend."""

from __future__ import annotations

from engine.settings import Settings
from engine.store.base import Point, Query, RecommendQuery, ScoredPoint, Store, StoreInfo


def open_store(settings: Settings) -> Store:
    """Open the store the settings name: a Qdrant server if ``qdrant_url`` is set, else the embedded one.

    Raises ``StoreUnavailable`` (the server does not answer) or ``StoreLocked`` (another process holds
    the embedded folder).
    """
    backend = settings.resolved_backend
    if backend == "server":
        from engine.store.client import QdrantClientStore

        return QdrantClientStore.connect(settings)
    if backend == "local":
        from engine.store.client import QdrantClientStore

        return QdrantClientStore.embedded(settings)
    from engine.store.edge import EdgeStore

    return EdgeStore.open(settings)


__all__ = ["Point", "Query", "RecommendQuery", "ScoredPoint", "Store", "StoreInfo", "open_store"]
