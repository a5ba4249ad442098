"""The record schema, in one place: collection names, deterministic point ids, the payload of a users point
and of a photos point (field names, their typed shape, who writes which), the one profile type, gender parsing.

Who writes what on a users point: ingestion writes :data:`USER_FIELDS` (:func:`user_payload`);
``engine.likes`` writes :data:`LIKED_IDS` and :data:`TASTE`; ``engine.reciprocity`` writes
:data:`STAT_FIELDS`. A photos point holds :data:`PHOTO_FIELDS` only (:func:`photo_payload`). Each writer
leaves the others' keys alone.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from engine.errors import InvalidInput
from engine.settings import GENDER_ALIASES

if TYPE_CHECKING:
    from engine.store.base import Point

PHOTOS = "photos"
USERS = "users"
META = "matcher_meta"
FEEDBACK = "feedback"  # logged decisions, one point per (viewer, candidate) pair: engine.feedback

# Fixed namespace: point ids must be the same on every machine and every run, so re-ingestion never duplicates.
_NAMESPACE = uuid.UUID("5b0f5d0e-8a4c-4c1e-9d5e-2f6a1c3b7e90")

# -- payload field names -------------------------------------------------------------------------------
USER_ID = "user_id"
GENDER = "gender"
AGE = "age"
SEEKING = "seeking"  # list of genders
AGE_MIN = "age_min"
AGE_MAX = "age_max"
ENCODER_ID = "encoder_id"
N_PHOTOS = "n_photos"  # users point: how many photo vectors its mean is made of
PHOTO_IDS = "photo_ids"  # users point: the ids of those photos points
PHOTO_SHA256 = "photo_sha256"  # photos point: hex digest of the file's bytes
SOURCE_PATH = "source_path"  # photos point: POSIX path relative to PHOTOS_DIR; never the bytes
LIKED_IDS = "liked_ids"  # users point, engine.likes: user ids liked, oldest first
TASTE = "taste"  # users point, engine.likes: taste vector as floats, only with likes
# engine.reciprocity's statistics: stored in blocks in META (engine.reciprocity.blocks); these names are their
# keys there and in the users points' payloads of stores written before the blocks (read until a pass writes
# the blocks; `matcher refresh` then removes them from the payloads)
KTH_SIM = "kth_sim"  # K-th best compatible similarity
KTH_K = "kth_k"  # ... the K it was computed with (a changed setting makes it stale)
KTH_TOP = "kth_top"  # ... the tail of the top-K similarities (ranks K-7..K), best first: what arrivals merge into;
# in a payload one string of comma-separated floats (window_value / window_of; earlier passes wrote a list)
# users point, no longer written: the learned model's per-user statistics and its taste coordinates, as the
# first version of engine.learned.rebuild stored them; a full rebuild removes them (engine.learned.served holds both)
LEGACY_MODEL_STATS = "pref"
LEGACY_MODEL_TASTE = "pref_taste"

PROFILE_FIELDS: tuple[str, ...] = (USER_ID, GENDER, AGE, SEEKING, AGE_MIN, AGE_MAX)
USER_FIELDS: tuple[str, ...] = (*PROFILE_FIELDS, N_PHOTOS, PHOTO_IDS, ENCODER_ID)  # what ingestion owns
PHOTO_FIELDS: tuple[str, ...] = (USER_ID, GENDER, AGE, PHOTO_SHA256, SOURCE_PATH, ENCODER_ID)
STAT_FIELDS: tuple[str, ...] = (KTH_SIM, KTH_K, KTH_TOP)  # kept together (blocks, or a legacy payload)
LEGACY_MODEL_FIELDS: tuple[str, ...] = (LEGACY_MODEL_STATS, LEGACY_MODEL_TASTE)  # removed together by a rebuild


class PhotoPayload(TypedDict):
    """The payload of a photos point (keys: :data:`PHOTO_FIELDS`)."""

    user_id: str
    gender: str
    age: int
    photo_sha256: str
    source_path: str
    encoder_id: str


class UserPayload(TypedDict):
    """The part of a users point's payload that ingestion writes (keys: :data:`USER_FIELDS`); the point may
    also hold ``liked_ids``/``taste`` (engine.likes) and :data:`STAT_FIELDS` (engine.reciprocity)."""

    user_id: str
    gender: str
    age: int
    seeking: list[str]
    age_min: int
    age_max: int
    n_photos: int
    photo_ids: list[str]
    encoder_id: str


# Payload fields that filters use; the store creates an index on each with the collections.
PHOTO_INDEXES: dict[str, str] = {USER_ID: "keyword", GENDER: "keyword", AGE: "integer", ENCODER_ID: "keyword"}
USER_INDEXES: dict[str, str] = {
    USER_ID: "keyword",
    GENDER: "keyword",
    SEEKING: "keyword",
    AGE: "integer",
    AGE_MIN: "integer",
    AGE_MAX: "integer",
}


FEEDBACK_INDEXES: dict[str, str] = {"viewer_id": "keyword", "candidate_id": "keyword", "decision": "keyword"}


def user_point_id(user_id: str) -> str:
    """The id of a user's point in ``users``: uuid5 of the user id."""
    return str(uuid.uuid5(_NAMESPACE, f"user:{user_id}"))


def no_photos_point_id(user_id: str) -> str:
    """The id of the record in ``matcher_meta`` saying ``user_id`` has valid metadata but no stored photo
    (every photo rejected), so ``recommend`` can say so instead of "not in the store"."""
    return str(uuid.uuid5(_NAMESPACE, f"no-photos:{user_id}"))


NO_PHOTOS_KIND = "user_without_photos"  # ``kind`` of those records' payload


def photo_point_id(user_id: str, photo_sha256: str) -> str:
    """The id of a photo's point in ``photos``: uuid5 of user id + the photo's content hash."""
    return str(uuid.uuid5(_NAMESPACE, f"photo:{user_id}:{photo_sha256}"))


@dataclass(frozen=True)
class Profile:
    """One user's profile: who they are (gender, age) and whom they accept (genders sought, age window).

    The one profile type: ingestion's validated rows (``ingestion.metadata.UserRecord``), the demo
    population (``evaluation.demo_data.DemoUser``) and the engine's compatibility filter all are or hold one.
    """

    user_id: str
    gender: str
    age: int
    seeking: tuple[str, ...]
    age_min: int
    age_max: int

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any] | None, *, where: str = "users point") -> Profile:
        """Read a users-collection payload; raise ``InvalidInput`` naming the missing or bad field."""
        payload = payload or {}
        for key in PROFILE_FIELDS:
            if key not in payload or payload[key] is None:
                raise InvalidInput(f"{where}: payload field {key!r} is missing")
        seeking = payload[SEEKING]
        if isinstance(seeking, str):
            seeking = [seeking]
        try:
            return cls(
                user_id=str(payload[USER_ID]),
                gender=str(payload[GENDER]),
                age=int(payload[AGE]),
                seeking=tuple(str(s) for s in seeking),
                age_min=int(payload[AGE_MIN]),
                age_max=int(payload[AGE_MAX]),
            )
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{where}: bad profile payload ({exc})") from None

    def fields(self) -> dict[str, Any]:
        """The profile as stored in payloads (keys :data:`PROFILE_FIELDS`; ``seeking`` as a list)."""
        return {
            USER_ID: self.user_id,
            GENDER: self.gender,
            AGE: self.age,
            SEEKING: list(self.seeking),
            AGE_MIN: self.age_min,
            AGE_MAX: self.age_max,
        }

    def same_profile(self, other: Profile) -> bool:
        """Whether ``other`` has the same profile fields (whatever else either carries)."""
        return self.fields() == other.fields()

    def accepts(self, other: Profile) -> bool:
        """Whether this user's own constraints accept ``other`` (one side only)."""
        return other.gender in self.seeking and self.age_min <= other.age <= self.age_max

    def compatible(self, other: Profile) -> bool:
        """Both sides accept each other (what the store filter computes, in plain Python)."""
        return self.accepts(other) and other.accepts(self)


def user_payload(profile: Profile, photo_ids: Sequence[str], encoder_id: str) -> UserPayload:
    """What ingestion writes on a users point: the profile, the photos its mean vector is made of."""
    return UserPayload(
        user_id=profile.user_id,
        gender=profile.gender,
        age=profile.age,
        seeking=list(profile.seeking),
        age_min=profile.age_min,
        age_max=profile.age_max,
        n_photos=len(photo_ids),
        photo_ids=list(photo_ids),
        encoder_id=encoder_id,
    )


def photo_payload(profile: Profile, sha256: str, source_path: str, encoder_id: str) -> PhotoPayload:
    """What ingestion writes on a photos point (``source_path`` relative to PHOTOS_DIR; never the bytes)."""
    return PhotoPayload(
        user_id=profile.user_id,
        gender=profile.gender,
        age=profile.age,
        photo_sha256=sha256,
        source_path=source_path,
        encoder_id=encoder_id,
    )


def window_value(window: Sequence[float]) -> str:
    """``kth_top`` as written: each float's shortest round-trip repr, joined by commas (exact; ``""`` for an
    empty window). One string rather than a list of floats because the Edge bindings convert each payload
    value by trying the JSON types in turn, a Python exception per miss: ~4 us a float, so a list of 8 cost
    ~75 us a point to hand over and one string ~8 us, and the incremental pass writes ~40 % of users."""
    return repr(list(map(float, window)))[1:-1].replace(" ", "")  # one repr call for the whole list


def window_of(value: Any) -> list[float] | None:
    """A stored ``kth_top`` as floats, best first: the string :func:`window_value` writes, or the list of
    numbers earlier passes wrote (both read the same); None when it is neither (missing or malformed)."""
    if isinstance(value, str):
        try:
            out = [float(x) for x in value.split(",")] if value else []
        except ValueError:
            return None
        return out if all(math.isfinite(x) for x in out) else None
    if isinstance(value, list) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        return [float(x) for x in value]
    return None


def photo_ids_of(payload: Mapping[str, Any] | None) -> list[str]:
    """The photos point ids a users point names (``[]`` when it names none)."""
    return [str(x) for x in (payload or {}).get(PHOTO_IDS) or []]


def usable_vector(point: Point) -> np.ndarray | None:
    """The point's vector as float32, or None when it has none (or an all-zero one: no valid photo)."""
    if point.vector is None:
        return None
    v = np.asarray(point.vector, dtype=np.float32)
    if v.size == 0 or not np.any(v) or not np.all(np.isfinite(v)):
        return None
    return v


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
