"""The FastAPI app: ``create_app(settings)`` opens the store once and serves it.

Routes: ``GET /healthz``, ``GET /users/{id}``, ``GET /users/{id}/recommendations?k=``, ``POST /feedback``,
``POST /embed``, ``GET /photos/{point_id}``.
OpenAPI docs at ``/docs``. Errors: ``{"error": message}`` (the CLI's message) with a 4xx/5xx status.
"""

from __future__ import annotations

import io
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from fastapi import Depends, FastAPI, File, Header, Query, UploadFile
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import BaseModel

from engine.errors import InvalidInput, MatcherError, UserNotFound
from engine.ranking.exposure import ExposureLedger
from engine.ranking.warm import WarmReport, warm
from engine.recommend import explain_empty, recommend
from engine.schema import PHOTOS, SOURCE_PATH, TASTE, USERS, photo_ids_of, user_point_id
from engine.settings import Settings
from engine.store import Store, open_store
from engine.users import store_stats
from ingestion.reader import DecodedPhoto, RawPhoto, decode_photo, resolve_inside, sha256
from matcher.service.errors import install_error_handlers
from matcher.service.review import review_router

Aggregation = Literal["harmonic", "geometric", "min", "arithmetic"]
StoreName = Literal["main", "compare"]
STORE_QUERY = Query("main", description="'compare': the second store (serve.compare_store_path), if one is set.")

log = logging.getLogger(__name__)


class Embedder(Protocol):
    encoder_id: str
    dim: int

    def embed(self, images: list[Image.Image]) -> np.ndarray: ...


class _State:
    """What the routes share: the open store, the settings, the encoder (loaded on the first /embed)."""

    def __init__(self, settings: Settings, store: Store | None, encoder: Embedder | None) -> None:
        self.settings = settings
        self.store = store
        self.compare: Store | None = None
        self.encoder = encoder
        self.warmed: list[WarmReport] = []  # what start-up filled (engine.ranking.warm), per store
        self.lock = threading.Lock()  # the embedded store and the encoder are used one request at a time
        # Impressions served, per store: the engine's impression budget and cold-start slots read them
        # (engine.ranking.exposure). A period is a UTC day, as the budget is counted per day.
        self.ledgers: dict[str, ExposureLedger] = {}
        self.period: date | None = None
        self.today: Callable[[], date] = lambda: datetime.now(UTC).date()

    def ledger(self, name: str) -> ExposureLedger:
        """The ledger of store ``name``; a new UTC day starts a new period in every ledger."""
        day = self.today()
        if day != self.period:
            for led in self.ledgers.values():
                led.new_period()
            self.period = day
        return self.ledgers.setdefault(name, ExposureLedger())

    def get_encoder(self) -> Embedder:
        if self.encoder is None:
            from training.encoder import load_encoder_from_settings

            self.encoder = load_encoder_from_settings(self.settings.encoder)
        return self.encoder


def compare_settings(settings: Settings) -> Settings | None:
    """Settings of the compare store (always embedded, in ``serve.compare_store_path``), or None."""
    path = settings.serve.compare_store_path
    if path is None:
        return None
    backend = settings.store_backend if settings.store_backend in ("edge", "local") else "edge"
    return settings.model_copy(update={"store_path": Path(path), "store_backend": backend, "qdrant_url": None})


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    encoder: Embedder | None = None,
    compare_store: Store | None = None,
) -> FastAPI:
    """The service over ``store`` (default: ``open_store(settings)``, opened at start-up, closed at shutdown).

    ``encoder``: used by ``POST /embed`` (default: loaded from ``settings.encoder`` on first use).
    ``compare_store``: a second store routes serve with ``?store=compare`` (default: opened from
    ``serve.compare_store_path`` when that is set, else none).
    """
    state = _State(settings, store, encoder)
    state.compare = compare_store
    own_store, own_compare = store is None, compare_store is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.store is None:
            state.store = open_store(settings, create=False)
        compare = compare_settings(settings)
        try:
            if state.compare is None and compare is not None:
                state.compare = open_store(compare, create=False)
            if settings.serve.warm:  # a user's first call then reads nothing one by one (docs/benchmarks.md)
                state.warmed = [warm(st, settings) for st in (state.store, state.compare) if st is not None]
            yield
        finally:
            if own_compare and state.compare is not None:
                state.compare.close()
                state.compare = None
            if own_store and state.store is not None:
                state.store.close()
                state.store = None

    app = FastAPI(title="profile-matcher", description=__doc__, lifespan=lifespan)
    app.state.matcher = state  # the ledgers and the clock, for tests and operators
    install_error_handlers(app)
    api_key = settings.serve.api_key

    def check_key(x_api_key: str | None = Header(None)) -> None:
        if api_key is None:
            return
        if x_api_key is None or not secrets.compare_digest(x_api_key, api_key.get_secret_value()):
            raise _Unauthorized()

    async def _unauthorized(request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "missing or wrong X-API-Key header"}, status_code=401)

    app.add_exception_handler(_Unauthorized, _unauthorized)
    guarded = [Depends(check_key)]

    def the_store() -> Store:
        if state.store is None:  # pragma: no cover - only between shutdown and a late request
            from engine.errors import StoreUnavailable

            raise StoreUnavailable("the store is not open")
        return state.store

    def pick(name: StoreName) -> Store:
        if name == "main":
            return the_store()
        if state.compare is None:
            raise InvalidInput(
                "store=compare: no compare store is open (start matcher serve with --compare-store PATH, "
                "or set MATCHER_SERVE__COMPARE_STORE_PATH)"
            )
        return state.compare

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """Store reachable, the encoder that made its vectors, and its counts."""
        try:
            with state.lock:
                stats = store_stats(the_store())
                compare = store_stats(state.compare) if state.compare is not None else None
        except MatcherError as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=503)
        return JSONResponse({"ok": True, "store": settings.resolved_backend, **stats, "compare": compare})

    @app.get("/users/{user_id}/recommendations", dependencies=guarded)
    def recommendations(
        user_id: str,
        k: int = Query(20, ge=1, le=1000),
        aggregation: Aggregation | None = Query(None, description="How the two directions combine."),  # noqa: B008
        store: StoreName = STORE_QUERY,
    ) -> dict[str, Any]:
        """The ``Match`` fields of ``engine.recommend`` plus gender, age and the best photo's URL."""
        s = settings
        if aggregation is not None:
            s = settings.model_copy(
                update={"recommend": settings.recommend.model_copy(update={"aggregation": aggregation})}
            )
        with state.lock:
            st = pick(store)
            matches = recommend(user_id, k, store=st, settings=s, exposure=state.ledger(store))
            payloads = {
                str(p.payload.get("user_id")): p.payload
                for p in st.retrieve(USERS, [user_point_id(m.user_id) for m in matches])
            }
            note = explain_empty(user_id, store=st) if not matches else None
        rows = []
        for m in matches:
            pl = payloads.get(m.user_id, {})
            rows.append(
                {
                    **m.to_dict(),
                    "gender": pl.get("gender"),
                    "age": pl.get("age"),
                    "best_photo_url": f"/photos/{m.best_photo_id}" if m.best_photo_id else None,
                }
            )
        out: dict[str, Any] = {
            "user_id": user_id,
            "store": store,
            "k": k,
            "aggregation": s.recommend.aggregation,
            "matches": rows,
        }
        if note:
            out["note"] = note
        elif len(rows) < k:
            out["note"] = f"only {len(rows)} compatible users"
        return out

    @app.get("/users/{user_id}", dependencies=guarded)
    def user(user_id: str, store: StoreName = STORE_QUERY) -> dict[str, Any]:
        """A user's stored fields and photo URLs."""
        with state.lock:
            got = pick(store).retrieve(USERS, [user_point_id(user_id)])
        if not got:
            raise UserNotFound(user_id)
        pl = dict(got[0].payload)
        pl.pop(TASTE, None)
        photo_ids = photo_ids_of(pl)
        pl["photo_urls"] = [f"/photos/{p}" for p in photo_ids]
        return pl

    @app.post("/feedback", dependencies=guarded)
    def feedback(body: FeedbackBody) -> dict[str, Any]:
        """Record likes, passes, blocks (``engine.feedback``): idempotent, the later ``ts`` wins per pair."""
        from engine.feedback import parse_event, record_feedback

        events = [
            parse_event(e.viewer_id, e.candidate_id, e.decision, e.ts, where=f"events[{i}]")
            for i, e in enumerate(body.events)
        ]
        with state.lock:
            rep = record_feedback(the_store(), events)
        return {"received": rep.received, "added": rep.added, "updated": rep.updated, "unchanged": rep.unchanged}

    @app.post("/embed", dependencies=guarded)
    async def embed(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008 - FastAPI's idiom
        """An uploaded image -> its vector (float32, L2-normalised), decoded as ingestion decodes photos."""
        limit = min(settings.serve.max_upload_bytes, settings.images.max_file_bytes)
        data = await file.read(limit + 1)
        name = file.filename or "upload"
        if len(data) > limit:
            raise InvalidInput(f"{name!r} is over the limit of {limit} bytes")
        if not data:
            raise InvalidInput(f"{name!r} is empty (0 bytes)")
        decoded = decode_photo(RawPhoto(rel_path=name, data=data, sha256=sha256(data)), settings.images)
        if not isinstance(decoded, DecodedPhoto):
            raise InvalidInput(decoded.detail)
        with state.lock:
            enc = state.get_encoder()
            vec = enc.embed([decoded.image])[0]
        return {"encoder_id": enc.encoder_id, "dim": int(vec.shape[0]), "vector": [float(x) for x in vec]}

    @app.get("/photos/{point_id}", dependencies=guarded)
    def photo(point_id: str, store: StoreName = STORE_QUERY) -> Response:
        """A JPEG thumbnail of a stored photo, read from ``serve.photos_root`` only (never outside it)."""
        root = settings.serve.photos_root
        if root is None:
            raise InvalidInput("serve.photos_root is not set (MATCHER_SERVE__PHOTOS_ROOT): no photos to serve")
        with state.lock:
            got = pick(store).retrieve(PHOTOS, [point_id])
        if not got:
            raise _PhotoNotFound(f"photo {point_id!r} is not in the store")
        rel = str(got[0].payload.get(SOURCE_PATH, ""))
        return Response(content=thumbnail(Path(root), rel, settings), media_type="image/jpeg")

    async def _photo_missing(request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    app.add_exception_handler(_PhotoNotFound, _photo_missing)
    app.include_router(review_router(pick, state.lock, guarded))
    return app


class FeedbackEvent(BaseModel):
    """One decision: ``viewer_id`` saw ``candidate_id``; ``decision`` like/pass/block/...; ``ts`` seconds."""

    viewer_id: str
    candidate_id: str
    decision: str
    ts: float | None = None


class FeedbackBody(BaseModel):
    events: list[FeedbackEvent]


class _Unauthorized(Exception):
    pass


class _PhotoNotFound(MatcherError):
    pass


def thumbnail(root: Path, rel: str, settings: Settings) -> bytes:
    """JPEG bytes of ``root / rel`` scaled to ``serve.thumbnail_px``; raises ``InvalidInput`` if ``rel``
    leaves ``root`` (``..``, absolute, a symlink out) or the file cannot be read as an image."""
    from ingestion.reader import read_photo

    real_root = root.resolve()
    inside = resolve_inside(real_root, rel)
    if not isinstance(inside, Path):
        raise InvalidInput(inside.detail)
    raw = read_photo(real_root, rel, settings.images)
    if not isinstance(raw, RawPhoto):
        raise InvalidInput(raw.detail)
    decoded = decode_photo(raw, settings.images)
    if not isinstance(decoded, DecodedPhoto):
        raise InvalidInput(decoded.detail)
    im = decoded.image.copy()
    im.thumbnail((settings.serve.thumbnail_px, settings.serve.thumbnail_px))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
