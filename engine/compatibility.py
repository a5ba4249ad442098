"""Who may be shown to whom: the two-sided filter over users' profiles (``engine.schema.Profile``).

A candidate B is compatible with an asker A when both sides accept each other: B's gender is in A's
``seeking`` and A's gender in B's; B's age in A's ``[age_min, age_max]`` and A's age in B's. The filter is
symmetric by construction, so "B is compatible with A" and "A is compatible with B" are the same test
(``engine.reciprocity`` relies on this).
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.filters import Filter, HasId, MatchAny, Range
from engine.schema import AGE, AGE_MAX, AGE_MIN, GENDER, PROFILE_FIELDS, SEEKING, Profile, user_point_id

__all__ = ["PROFILE_FIELDS", "Profile", "age_conditions", "compatible_filter", "gender_conditions"]

def gender_conditions(p: Profile) -> tuple[MatchAny, MatchAny]:
    """Candidate's gender in ``p.seeking``, and ``p.gender`` in the candidate's ``seeking``."""
    return MatchAny.of(GENDER, p.seeking), MatchAny.of(SEEKING, [p.gender])


def age_conditions(p: Profile) -> tuple[Range, Range, Range]:
    """Candidate's age in ``p``'s window, and ``p.age`` inside the candidate's window."""
    own_window = Range(AGE, gte=p.age_min, lte=p.age_max)
    return own_window, Range(AGE_MIN, lte=p.age), Range(AGE_MAX, gte=p.age)


def compatible_filter(p: Profile, *, exclude: Iterable[str] = ()) -> Filter:
    """The store filter for ``p``'s compatible candidates: both sides' constraints, never ``p`` itself,
    never a user whose id is in ``exclude`` (user ids, not point ids)."""
    never = {user_point_id(p.user_id), *(user_point_id(u) for u in exclude)}
    return Filter(must=(*gender_conditions(p), *age_conditions(p)), must_not=(HasId.of(never),))
