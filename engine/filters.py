"""A backend-neutral filter model; each store backend translates it to its own Qdrant types.

Kept deliberately small: exactly what the product's queries need (keyword/integer match-any, integer
ranges, id sets), so every backend can implement all of it and the congruence tests can cover all of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MatchAny:
    """Payload ``key`` equals one of ``values`` (for a list payload: any element does)."""

    key: str
    values: tuple[str | int, ...]

    @classmethod
    def of(cls, key: str, values: Iterable[str | int]) -> MatchAny:
        return cls(key, tuple(values))


@dataclass(frozen=True)
class Range:
    """``gte <= payload[key] <= lte``; either bound may be None."""

    key: str
    gte: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class HasId:
    """The point id is one of ``ids``."""

    ids: frozenset[str]

    @classmethod
    def of(cls, ids: Iterable[str]) -> HasId:
        return cls(frozenset(ids))


Condition = MatchAny | Range | HasId


@dataclass(frozen=True)
class Filter:
    """All of ``must`` hold and none of ``must_not`` holds."""

    must: tuple[Condition, ...] = field(default_factory=tuple)
    must_not: tuple[Condition, ...] = field(default_factory=tuple)

    def is_empty(self) -> bool:
        return not self.must and not self.must_not
