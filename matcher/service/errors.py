"""Request errors as JSON: ``{"error": message}`` with the same message the CLI prints."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from engine.errors import (
    EncoderMismatch,
    EncoderUnavailable,
    InvalidInput,
    MatcherError,
    NoUserVector,
    StoreUnavailable,
    UserNotFound,
)

# Most specific first: InvalidInput is also a ValueError, UserNotFound a KeyError.
_STATUS: tuple[tuple[type[MatcherError], int], ...] = (
    (UserNotFound, 404),
    (NoUserVector, 409),
    (InvalidInput, 400),
    (EncoderMismatch, 409),
    (EncoderUnavailable, 503),
    (StoreUnavailable, 503),
)


def status_of(exc: Exception) -> int:
    """The HTTP status for a product error (500 for a kind not listed)."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def install_error_handlers(app: FastAPI) -> None:
    """Turn every ``MatcherError`` a route raises into ``{"error": str(exc)}`` with its status."""

    async def _matcher_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=status_of(exc))

    app.add_exception_handler(MatcherError, _matcher_error)
