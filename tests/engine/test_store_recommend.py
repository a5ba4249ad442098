"""The Recommendation API through the store seam, on every backend, against its definition in numpy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from engine.errors import InvalidInput
from engine.filters import Filter, MatchAny
from engine.schema import USERS
from engine.store import RecommendQuery, Store
from engine.store.base import average_vector_query
from tests.engine.test_store_contract import DIM, brute_force, make_users, matches

if TYPE_CHECKING:
    from tests.engine.conftest import StoreFactory


@pytest.fixture
def filled(store_factory: StoreFactory) -> tuple[Store, list, np.ndarray]:
    s = store_factory.open()
    s.setup("enc-test", DIM)
    points, vectors = make_users(60, seed=3)
    s.upsert(USERS, points)
    return s, points, vectors


def test_average_vector_is_a_nearest_query_for_two_pos_minus_neg(filled: tuple[Store, list, np.ndarray]) -> None:
    store, points, vectors = filled
    pos, neg = [0, 1, 2], [3, 4]
    flt = Filter(must=(MatchAny.of("gender", ["female", "male"]),))
    got = store.recommend(
        USERS,
        RecommendQuery(
            positive=tuple(points[i].id for i in pos), negative=tuple(points[i].id for i in neg), limit=8, filter=flt
        ),
    )
    q = average_vector_query(vectors[pos], vectors[neg])
    q = q / np.linalg.norm(q)
    examples = {points[i].id for i in pos + neg}
    want = [(i, s) for i, s in brute_force(points, vectors, q, flt, 20) if i not in examples][:8]
    assert [p.id for p in got] == [i for i, _ in want]
    assert not examples & {p.id for p in got}  # an example is never recommended


def test_best_score_orders_by_best_positive_then_least_negative(filled: tuple[Store, list, np.ndarray]) -> None:
    store, points, vectors = filled
    pos, neg = [5, 6], [7, 8, 9]
    got = store.recommend(
        USERS,
        RecommendQuery(
            positive=tuple(points[i].id for i in pos),
            negative=tuple(points[i].id for i in neg),
            limit=50,
            strategy="best_score",
        ),
    )
    best_pos = (vectors @ vectors[pos].T).max(axis=1)
    best_neg = (vectors @ vectors[neg].T).max(axis=1)
    # Winners (closer to a positive) rank by that similarity; losers after them by distance from negatives.
    key = np.where(best_pos > best_neg, 2.0 + best_pos, -best_neg)
    examples = set(pos + neg)
    order = [i for i in np.argsort(-key, kind="stable") if i not in examples][:50]
    assert [p.id for p in got] == [points[i].id for i in order]


def test_recommend_respects_the_filter_and_refuses_no_positive(filled: tuple[Store, list, np.ndarray]) -> None:
    store, points, _ = filled
    flt = Filter(must=(MatchAny.of("gender", ["nonbinary"]),))
    got = store.recommend(USERS, RecommendQuery(positive=(points[0].id,), negative=(), limit=60, filter=flt))
    by_id = {p.id: p for p in points}
    assert got and all(matches(by_id[p.id].payload, p.id, flt) for p in got)
    with pytest.raises(InvalidInput, match="no stored positive"):
        store.recommend(USERS, RecommendQuery(positive=(), negative=(points[1].id,), limit=5))
    with pytest.raises(InvalidInput, match="strategy"):
        store.recommend(USERS, RecommendQuery(positive=(points[0].id,), negative=(), limit=5, strategy="sum"))
