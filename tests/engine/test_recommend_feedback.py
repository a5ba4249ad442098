"""recommend() reads the stored feedback: blocks exclude both ways, a logged pass lowers a candidate's score
to the bottom, a logged like raises it (s(candidate→asker) is what the candidate already decided)."""

from __future__ import annotations

import numpy as np

from engine.feedback import Event, record_feedback
from engine.reciprocity.full import refresh
from engine.recommend import recommend, recommend_many
from engine.settings import Settings
from engine.store import Store
from tests.engine.test_recommend import db, put_users, random_population  # noqa: F401 - db is a fixture

__all__ = ["db"]


def _setup(store: Store, settings: Settings) -> str:
    people = random_population(80, seed=5)
    put_users(store, people)
    store.optimize()
    refresh(store, settings)
    return people[0]["user_id"]


def test_passes_lower_and_likes_raise_a_candidates_score(db: tuple[Store, Settings]) -> None:
    store, settings = db
    asker = _setup(store, settings)
    before = recommend(asker, 10, store=store, settings=settings)
    assert len(before) >= 4
    top, last = before[0].user_id, before[-1].user_id
    record_feedback(store, [Event(top, asker, "pass", 1.0), Event(last, asker, "like", 1.0)])
    after = {m.user_id: m for m in recommend(asker, 10, store=store, settings=settings)}
    old = {m.user_id: m for m in before}
    assert top not in after or after[top].score < old[top].score  # the pass: a match is impossible
    assert top not in after or after[top].score == 0.0
    assert after[last].score > old[last].score and after[last].score_b_to_a == 1.0
    assert after[last].rank < old[last].rank


def test_block_excludes_both_ways(db: tuple[Store, Settings]) -> None:
    store, settings = db
    asker = _setup(store, settings)
    first = [m.user_id for m in recommend(asker, 10, store=store, settings=settings)]
    blocked_by_asker, blocker = first[0], first[1]
    seen_by = recommend_many([blocked_by_asker, blocker], 50, store=store, settings=settings)
    assert all(asker in [m.user_id for m in seen_by[u]] for u in seen_by)  # else the check below is empty
    record_feedback(store, [Event(asker, blocked_by_asker, "block"), Event(blocker, asker, "report")])
    again = [m.user_id for m in recommend(asker, 10, store=store, settings=settings)]
    assert blocked_by_asker not in again and blocker not in again
    many = recommend_many([asker, blocked_by_asker, blocker], 50, store=store, settings=settings)
    assert blocked_by_asker not in [m.user_id for m in many[asker]]
    assert asker not in [m.user_id for m in many[blocked_by_asker]]  # the blocked side never sees them
    assert asker not in [m.user_id for m in many[blocker]]
    assert np.isfinite([m.score for m in many[asker]]).all()
