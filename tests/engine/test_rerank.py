"""The reranking maths (engine/ranking/rerank.py): aggregation, taste, best photo, reciprocity, the whole formula."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InvalidInput
from engine.ranking.rerank import (
    RerankInput,
    RerankWeights,
    aggregate,
    appeal,
    best_photo_per_owner,
    directional,
    l2_normalize,
    reciprocity,
    rerank,
    taste_vector,
)


def test_aggregations_punish_one_sided_matches_in_order() -> None:
    a = np.array([0.9, 0.5])
    b = np.array([0.1, 0.5])  # first pair one-sided, second balanced, same arithmetic mean
    arith = aggregate(a, b, "arithmetic")
    geo = aggregate(a, b, "geometric")
    harm = aggregate(a, b, "harmonic")
    mn = aggregate(a, b, "min")
    np.testing.assert_allclose(arith, [0.5, 0.5])
    np.testing.assert_allclose(geo, [0.3, 0.5])
    np.testing.assert_allclose(harm, [0.18, 0.5])
    np.testing.assert_allclose(mn, [0.1, 0.5])
    # The balanced pair wins under every aggregation except the arithmetic mean (a tie).
    for scores in (geo, harm, mn):
        assert scores[1] > scores[0]


def test_aggregation_is_symmetric_and_safe_at_zero() -> None:
    a, b = np.array([0.0, 0.3, 0.7]), np.array([0.0, 0.8, 0.2])
    for method in ("harmonic", "geometric", "min", "arithmetic"):
        np.testing.assert_allclose(aggregate(a, b, method), aggregate(b, a, method))
        assert np.all(np.isfinite(aggregate(a, b, method)))
    assert aggregate(np.array([0.0]), np.array([0.0]), "harmonic")[0] == 0.0


def test_unknown_aggregation_names_the_setting() -> None:
    with pytest.raises(InvalidInput, match="recommend.aggregation"):
        aggregate(np.array([0.5]), np.array([0.5]), "median")


def test_taste_without_likes_is_own_vector_and_likes_pull_it() -> None:
    own = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    liked = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(taste_vector(own, None, 0.5), own)
    np.testing.assert_allclose(taste_vector(own, liked[:0], 0.5), own)
    half = taste_vector(own, liked, 0.5)
    np.testing.assert_allclose(half, [2**-0.5, 2**-0.5, 0.0], rtol=1e-6)
    assert half.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(half), 1.0, rtol=1e-6)
    full = taste_vector(own, liked, 1.0)
    np.testing.assert_allclose(full, [0.0, 1.0, 0.0], atol=1e-7)


def test_best_photo_per_owner_picks_each_owners_maximum() -> None:
    scores = np.array([0.1, 0.9, 0.4, 0.3, 0.8])
    owner = np.array([0, 1, 0, 1, 3])  # owner 2 has no photo
    best, idx = best_photo_per_owner(scores, owner, 4)
    np.testing.assert_allclose(best[[0, 1, 3]], [0.4, 0.9, 0.8])
    assert best[2] == -np.inf
    assert list(idx) == [2, 1, -1, 4]
    empty_best, empty_idx = best_photo_per_owner(np.array([]), np.array([], dtype=int), 2)
    assert list(empty_idx) == [-1, -1] and np.all(np.isneginf(empty_best))


def test_appeal_blends_mean_and_best_photo_and_falls_back_without_photo() -> None:
    out = appeal(np.array([0.2, 0.2]), np.array([0.6, -np.inf]), 0.5)
    np.testing.assert_allclose(out, [0.4, 0.2])
    np.testing.assert_allclose(appeal(np.array([0.2]), np.array([0.6]), 0.0), [0.2])


def test_reciprocity_is_a_soft_rank_test() -> None:
    r = reciprocity(np.array([0.8, 0.5, 0.2, 0.5]), np.array([0.5, 0.5, 0.5, np.nan]), 0.05)
    assert r[0] > 0.99 and r[2] < 0.01  # well inside / far outside the chooser's top-K
    np.testing.assert_allclose(r[[1, 3]], [0.5, 0.5])  # on the boundary; unknown kth is neutral
    assert np.all(np.diff(reciprocity(np.linspace(-1, 1, 9), 0.0, 0.1)) > 0)
    with pytest.raises(InvalidInput, match="temperature"):
        reciprocity(np.array([0.1]), 0.0, 0.0)


def test_directional_weights_appeal_against_reciprocity() -> None:
    np.testing.assert_allclose(directional(np.array([1.0, -1.0]), np.array([0.0, 1.0]), 0.0), [1.0, 0.0])
    np.testing.assert_allclose(directional(np.array([1.0, -1.0]), np.array([0.0, 1.0]), 1.0), [0.0, 1.0])
    np.testing.assert_allclose(directional(np.array([0.0]), np.array([1.0]), 0.5), [0.75])


def _input(n: int, *, kth_b: np.ndarray, mutual: np.ndarray) -> RerankInput:
    return RerankInput(
        fwd_mean=mutual.copy(),
        fwd_photo=np.full(n, -np.inf),
        rev_mean=mutual.copy(),
        rev_photo=np.full(n, -np.inf),
        kth_a=0.0,
        kth_b=kth_b,
    )


def test_symmetric_signals_keep_stage_one_order() -> None:
    mutual = np.array([0.9, 0.8, 0.7])
    out = rerank(_input(3, kth_b=np.zeros(3), mutual=mutual), RerankWeights())
    assert list(out.order()) == [0, 1, 2]
    np.testing.assert_allclose(out.a_to_b, out.b_to_a)


def test_rerank_demotes_candidate_for_whom_asker_is_far_down_the_list() -> None:
    # B (index 0) is A's nearest neighbour, but B's own 50th neighbour is at 0.97: A is far down B's list.
    mutual = np.array([0.9, 0.85])
    kth_b = np.array([0.97, 0.3])
    out = rerank(_input(2, kth_b=kth_b, mutual=mutual), RerankWeights())
    assert list(out.order()) == [1, 0]
    assert out.b_to_a[0] < out.a_to_b[0]  # the one-sided direction is the reverse one
    # Without reciprocity, or with the arithmetic mean of a weak signal, the order would not flip as much:
    plain = rerank(_input(2, kth_b=kth_b, mutual=mutual), RerankWeights(reciprocity_weight=0.0))
    assert list(plain.order()) == [0, 1]


def test_harmonic_punishes_one_sided_more_than_arithmetic() -> None:
    # Candidate 0: strong forward appeal but weak reverse; candidate 1: balanced, slightly lower on average.
    x = RerankInput(
        fwd_mean=np.array([0.9, 0.35]),
        fwd_photo=np.array([0.9, 0.35]),
        rev_mean=np.array([-0.2, 0.3]),
        rev_photo=np.array([-0.2, 0.3]),
        kth_a=0.5,
        kth_b=np.array([0.5, 0.5]),
    )
    arith = rerank(x, RerankWeights(aggregation="arithmetic"))
    harm = rerank(x, RerankWeights(aggregation="harmonic"))
    assert list(arith.order()) == [0, 1]
    assert list(harm.order()) == [1, 0]


def test_best_photo_changes_forward_appeal() -> None:
    x = RerankInput(
        fwd_mean=np.array([0.5, 0.5]),
        fwd_photo=np.array([0.9, 0.5]),
        rev_mean=np.array([0.5, 0.5]),
        rev_photo=np.array([0.5, 0.5]),
        kth_a=0.5,
        kth_b=np.array([0.5, 0.5]),
    )
    out = rerank(x, RerankWeights(best_photo_weight=0.5))
    assert out.a_to_b[0] > out.a_to_b[1]
    np.testing.assert_allclose(out.b_to_a[0], out.b_to_a[1])
    assert list(out.order()) == [0, 1]


def test_l2_normalize_keeps_zero_rows() -> None:
    x = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(x, [[0.6, 0.8], [0.0, 0.0]])
    assert x.dtype == np.float32
