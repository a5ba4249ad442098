"""The match-review page's routes: the page itself, the user list, and a photo's nearest photos.

The page (``static/review.html``, plain HTML and a little JS, no build step) reads the JSON routes of the
service, so what it shows is what a client gets.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from engine.errors import InvalidInput
from engine.schema import AGE, GENDER, N_PHOTOS, PHOTOS, USER_ID, USERS
from engine.store import Store
from engine.store.base import Query as StoreQuery

PAGE = "review.html"


def review_html() -> str:
    """The page's HTML (shipped as package data next to this module)."""
    return resources.files("matcher.service").joinpath("static", PAGE).read_text(encoding="utf-8")


def list_users(store: Store, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` stored users, sorted by id: ``{"user_id", "gender", "age", "n_photos"}``."""
    rows = [{k: p.payload.get(k) for k in (USER_ID, GENDER, AGE, N_PHOTOS)} for p in store.scroll(USERS)]
    return sorted(rows, key=lambda r: str(r["user_id"]))[:limit]


def neighbours(store: Store, point_id: str, k: int) -> dict[str, Any]:
    """The ``k`` photos nearest to photo ``point_id`` (itself excluded), each with its owner and cosine score.

    Raises ``InvalidInput`` if ``point_id`` is not a stored photo (or has no vector).
    """
    got = store.retrieve(PHOTOS, [point_id], with_vectors=True)
    vec = got[0].vector if got else None
    if vec is None:
        raise InvalidInput(f"photo {point_id!r} is not in the store")
    me = got[0]
    hits = store.query(PHOTOS, StoreQuery(vector=vec, limit=k + 1, with_payload=("user_id",)))
    rows = [
        {
            "point_id": h.id,
            "user_id": (h.payload or {}).get("user_id"),
            "score": float(h.score),
            "photo_url": f"/photos/{h.id}",
        }
        for h in hits
        if h.id != point_id
    ][:k]
    owner = me.payload.get("user_id")
    return {"point_id": point_id, "user_id": owner, "photo_url": f"/photos/{point_id}", "neighbours": rows}


def review_router(get_store: Any, lock: Any, guarded: list[Any]) -> APIRouter:
    """Routes ``/review``, ``/users`` and ``/photos/{point_id}/neighbours`` over ``get_store(name)``
    (``name``: "main", or "compare" for the second store)."""
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    @router.get("/review", response_class=HTMLResponse)
    def page() -> str:
        """The match-review page (no data in it: it asks the JSON routes)."""
        return review_html()

    @router.get("/users", dependencies=guarded)
    def users(
        limit: int = Query(1000, ge=1, le=100_000), store: Literal["main", "compare"] = Query("main")
    ) -> dict[str, Any]:
        """Stored users (id, gender, age, photo count), sorted by id."""
        with lock:
            return {"users": list_users(get_store(store), limit)}

    @router.get("/photos/{point_id}/neighbours", dependencies=guarded)
    def photo_neighbours(
        point_id: str, k: int = Query(8, ge=1, le=100), store: Literal["main", "compare"] = Query("main")
    ) -> dict[str, Any]:
        """A photo's nearest stored photos (in ``store``), with their owners' ids."""
        with lock:
            return {**neighbours(get_store(store), point_id, k), "store": store}

    return router
