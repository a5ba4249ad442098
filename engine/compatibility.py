"""Who may be shown to whom: a user's profile (gender, age, what they seek) and the two-sided filter.

A candidate B is compatible with an asker A when both sides accept each other: B's gender is in A's
``seeking`` and A's gender in B's; B's age in A's ``[age_min, age_max]`` and A's age in B's. The filter is
symmetric by construction, so "B is compatible with A" and "A is compatible with B" are the same test
(``engine.reciprocity`` relies on this).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from engine.errors import InvalidInput
from engine.filters import Filter, HasId, MatchAny, Range
from engine.schema import user_point_id

# The payload keys of a users point that the profile reads.
PROFILE_FIELDS: tuple[str, ...] = ("user_id", "gender", "age", "seeking", "age_min", "age_max")


@dataclass(frozen=True)
class Profile:
    """What the compatibility filter needs about one user."""

    user_id: str
    gender: str
    age: int
    seeking: tuple[str, ...]
    age_min: int
    age_max: int

    @classmethod
    def from_payload(cls, payload: dict[str, Any] | None, *, where: str = "users point") -> Profile:
        """Read a users-collection payload; raise ``InvalidInput`` naming the missing or bad field."""
        payload = payload or {}
        for key in PROFILE_FIELDS:
            if key not in payload or payload[key] is None:
                raise InvalidInput(f"{where}: payload field {key!r} is missing")
        seeking = payload["seeking"]
        if isinstance(seeking, str):
            seeking = [seeking]
        try:
            return cls(
                user_id=str(payload["user_id"]),
                gender=str(payload["gender"]),
                age=int(payload["age"]),
                seeking=tuple(str(s) for s in seeking),
                age_min=int(payload["age_min"]),
                age_max=int(payload["age_max"]),
            )
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{where}: bad profile payload ({exc})") from None

    def accepts(self, other: Profile) -> bool:
        """Whether this user's own constraints accept ``other`` (one side only)."""
        return other.gender in self.seeking and self.age_min <= other.age <= self.age_max

    def compatible(self, other: Profile) -> bool:
        """Both sides accept each other (what the store filter computes, in plain Python)."""
        return self.accepts(other) and other.accepts(self)


def gender_conditions(p: Profile) -> tuple[MatchAny, MatchAny]:
    """Candidate's gender in ``p.seeking``, and ``p.gender`` in the candidate's ``seeking``."""
    return MatchAny.of("gender", p.seeking), MatchAny.of("seeking", [p.gender])


def age_conditions(p: Profile) -> tuple[Range, Range, Range]:
    """Candidate's age in ``p``'s window, and ``p.age`` inside the candidate's window."""
    own_window = Range("age", gte=p.age_min, lte=p.age_max)
    return own_window, Range("age_min", lte=p.age), Range("age_max", gte=p.age)


def compatible_filter(p: Profile, *, exclude: Iterable[str] = ()) -> Filter:
    """The store filter for ``p``'s compatible candidates: both sides' constraints, never ``p`` itself,
    never a user whose id is in ``exclude`` (user ids, not point ids)."""
    never = {user_point_id(p.user_id), *(user_point_id(u) for u in exclude)}
    return Filter(must=(*gender_conditions(p), *age_conditions(p)), must_not=(HasId.of(never),))
