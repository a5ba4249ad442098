"""Record schema: collection names, deterministic point ids, payload fields, gender parsing."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from engine.errors import InvalidInput
from engine.settings import GENDER_ALIASES

PHOTOS = "photos"
USERS = "users"
META = "matcher_meta"
FEEDBACK = "feedback"  # logged decisions, one point per (viewer, candidate) pair: engine.feedback

# Fixed namespace: point ids must be the same on every machine and every run, so re-ingestion never duplicates.
_NAMESPACE = uuid.UUID("5b0f5d0e-8a4c-4c1e-9d5e-2f6a1c3b7e90")

# Payload fields that filters use; the store creates an index on each with the collections.
PHOTO_INDEXES: dict[str, str] = {"user_id": "keyword", "gender": "keyword", "age": "integer", "encoder_id": "keyword"}
USER_INDEXES: dict[str, str] = {
    "user_id": "keyword",
    "gender": "keyword",
    "seeking": "keyword",
    "age": "integer",
    "age_min": "integer",
    "age_max": "integer",
}


FEEDBACK_INDEXES: dict[str, str] = {"viewer_id": "keyword", "candidate_id": "keyword", "decision": "keyword"}


def user_point_id(user_id: str) -> str:
    """The id of a user's point in ``users``: uuid5 of the user id."""
    return str(uuid.uuid5(_NAMESPACE, f"user:{user_id}"))


def photo_point_id(user_id: str, photo_sha256: str) -> str:
    """The id of a photo's point in ``photos``: uuid5 of user id + the photo's content hash."""
    return str(uuid.uuid5(_NAMESPACE, f"photo:{user_id}:{photo_sha256}"))


def parse_gender(value: str, allowed: Sequence[str], *, field: str = "gender") -> str:
    """Normalise a gender value (case-insensitive, aliases f/m/nb); raise ``InvalidInput`` naming ``field``."""
    g = str(value).strip().lower()
    g = GENDER_ALIASES.get(g, g)
    if g not in allowed:
        raise InvalidInput(f"{field}: {value!r} is not one of {', '.join(allowed)}")
    return g


def parse_seeking(value: str | None, gender: str, allowed: Sequence[str]) -> list[str]:
    """Parse a ``|``-separated seeking list; empty means the other binary gender, or everyone for non-binary."""
    if value is None or not str(value).strip():
        return default_seeking(gender, allowed)
    out = sorted({parse_gender(v, allowed, field="seeking") for v in str(value).split("|") if v.strip()})
    if not out:
        return default_seeking(gender, allowed)
    return out


def default_seeking(gender: str, allowed: Iterable[str]) -> list[str]:
    allowed = list(allowed)
    other = {"female": "male", "male": "female"}.get(gender)
    if other is not None and other in allowed:
        return [other]
    return sorted(allowed)
