"""Retrieval metrics: hand-computed values on tiny inputs, and agreement with pytorch-metric-learning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.errors import InvalidInput
from training.metrics import retrieval_metrics, scalar_metrics


def _circle(degrees: list[float]) -> np.ndarray:
    """Unit vectors in 2-D at these angles: cosine distance grows with the angle between them."""
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)


def _cd(deg: float) -> float:
    return 1.0 - math.cos(math.radians(deg))


# p0 A 0deg, p1 B 20deg, p2 A 50deg, p3 A 90deg, p4 C 200deg. B and C are lone (never queries).
# Rankings (nearest first):  p0: B A A C -> R=2, AP@R = (1/2)(1/2) = 1/4, hit@1 no,  hit@2 yes
#                            p2: B A A C -> AP@R = 1/4,                                hit@1 no,  hit@2 yes
#                            p3: A B A C -> AP@R = (1/2)(1/1) = 1/2,                   hit@1 yes
# MAP@R = (1/4 + 1/4 + 1/2) / 3 = 1/3, while R-precision would be 1/2 for each query.
ANGLES = [0.0, 20.0, 50.0, 90.0, 200.0]
LABELS = ["A", "B", "A", "A", "C"]


def test_hand_computed_small_case() -> None:
    m = retrieval_metrics(_circle(ANGLES), LABELS, ks=(1, 2, 3))
    assert m["n_photos"] == 5 and m["n_identities"] == 3 and m["n_queries"] == 3
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@2"] == pytest.approx(1.0)
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["map@r"] == pytest.approx(1 / 3)
    same = [_cd(50), _cd(90), _cd(40)]
    diff = [_cd(20), _cd(160), _cd(30), _cd(70), _cd(180), _cd(150), _cd(110)]
    assert m["mean_same_dist"] == pytest.approx(np.mean(same), abs=1e-6)
    assert m["mean_diff_dist"] == pytest.approx(np.mean(diff), abs=1e-6)
    assert sorted(m["same_dist"].tolist()) == pytest.approx(sorted(same), abs=1e-6)
    assert sorted(m["diff_dist"].tolist()) == pytest.approx(sorted(diff), abs=1e-6)
    assert m["same_dist"].dtype == np.float32


def test_map_at_r_rewards_order_not_just_precision() -> None:
    """Two queries with the same precision among their R neighbours but positives at different ranks."""
    # q0 (A, 0deg): A at 10deg first, then B at 30deg, then A at 60deg. R = 2: AP@R = (1/2)(1) = 1/2.
    # Move that B closer (5deg): ranks B, A, ... -> AP@R = (1/2)(1/2) = 1/4, precision@R is 1/2 both times.
    first = retrieval_metrics(_circle([0, 10, 30, 60])[[0, 1, 2, 3]], ["A", "A", "B", "A"], ks=(1,))
    second = retrieval_metrics(_circle([0, 10, 5, 60]), ["A", "A", "B", "A"], ks=(1,))
    # Per query: first  q0: A B A -> 1/2 ; q1(10): A(0) B(30) A(60) -> 1/2 ; q3(60): B(30) A(10) A(0) -> 1/4
    #            second q0: B A A -> 1/4 ; q1(10): B(5) A(0) A(60) -> 1/4 ; q3(60): A(10) B(5) A(0) -> 1/2
    assert first["map@r"] == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    assert second["map@r"] == pytest.approx((0.25 + 0.25 + 0.5) / 3)


def test_perfect_and_lone_only() -> None:
    emb = _circle([0, 1, 90, 91, 180, 181])
    m = retrieval_metrics(emb, [1, 1, 2, 2, 3, 3])
    assert m["recall@1"] == 1.0 and m["recall@5"] == 1.0 and m["map@r"] == 1.0
    assert m["mean_same_dist"] < 1e-3 < m["mean_diff_dist"]
    lone = retrieval_metrics(_circle([0, 90, 180]), ["a", "b", "c"])
    assert lone["n_queries"] == 0 and math.isnan(lone["recall@1"]) and math.isnan(lone["map@r"])
    assert math.isnan(lone["mean_same_dist"]) and len(lone["same_dist"]) == 0


def test_ties_break_by_photo_order() -> None:
    # p1 (A) and p2 (B) are the same point: for query p0 the earlier photo (p1, a hit) ranks first.
    # p3 (B, 200deg) is nearest to p0 (A) either way, and p1, p2 find each other (a miss) either way.
    emb = _circle([0, 30, 30, 200])
    m = retrieval_metrics(emb, ["A", "A", "B", "B"], ks=(1,))
    m_swapped = retrieval_metrics(emb[[0, 2, 1, 3]], ["A", "B", "A", "B"], ks=(1,))
    # p0 hits with p1 first; swapped, p0 sees the B photo first and misses.
    assert m["recall@1"] == pytest.approx(0.25)
    assert m_swapped["recall@1"] == 0.0


def test_invariant_to_photo_order_without_ties() -> None:
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((40, 6)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = rng.integers(0, 12, size=40)
    perm = rng.permutation(40)
    a, b = retrieval_metrics(emb, labels), retrieval_metrics(emb[perm], labels[perm])
    assert scalar_metrics(a) == pytest.approx(scalar_metrics(b))


def test_blocks_and_pair_sampling() -> None:
    """More photos than one block of rows; the plotted pairs are sampled, the means stay exact."""
    rng = np.random.default_rng(5)
    emb = rng.standard_normal((1100, 4)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = rng.integers(0, 300, size=1100)
    full = retrieval_metrics(emb, labels, max_pairs=None)
    sampled = retrieval_metrics(emb, labels, max_pairs=10_000)
    assert len(full["diff_dist"]) == 1100 * 1099 // 2 - len(full["same_dist"])
    assert 8_000 < len(sampled["diff_dist"]) < 12_000
    assert scalar_metrics(full) == scalar_metrics(sampled)
    assert float(sampled["diff_dist"].mean()) == pytest.approx(full["mean_diff_dist"], abs=0.02)
    # Brute force of the same recall@1 and mean distances.
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    nn = sim.argmax(axis=1)
    same = labels[:, None] == labels[None, :]
    has = (same.sum(axis=1) - 1) > 0
    assert full["recall@1"] == pytest.approx((labels[nn] == labels)[has].mean())
    iu = np.triu_indices(1100, 1)
    d = 1 - (emb @ emb.T)[iu]
    assert full["mean_same_dist"] == pytest.approx(d[same[iu]].mean(), rel=1e-5)


def test_bad_input_is_rejected() -> None:
    emb = _circle([0, 10, 20])
    with pytest.raises(InvalidInput, match="labels"):
        retrieval_metrics(emb, ["a", "b"])
    with pytest.raises(InvalidInput, match="L2-normalised"):
        retrieval_metrics(emb * 2, ["a", "a", "b"])
    with pytest.raises(InvalidInput, match="shape"):
        retrieval_metrics(emb[:1], ["a"])
    with pytest.raises(InvalidInput, match="NaN"):
        retrieval_metrics(np.full((3, 2), np.nan, np.float32), ["a", "a", "b"])
    with pytest.raises(InvalidInput, match="ks"):
        retrieval_metrics(emb, ["a", "a", "b"], ks=(0,))


def _pml(emb: np.ndarray, labels: np.ndarray, k: int | str | None) -> dict[str, float]:
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    calc = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r"),
        k=k,
        device=__import__("torch").device("cpu"),
        knn_func=CustomKNN(CosineSimilarity()),
    )
    return calc.get_accuracy(emb, labels)  # reference None: leave-one-out over the same set


@pytest.mark.parametrize("k", ["max_bin_count", None])
def test_agrees_with_pytorch_metric_learning(k: str | None) -> None:
    rng = np.random.default_rng(11)
    labels = np.repeat(np.arange(30), rng.integers(1, 6, size=30))
    centres = 1.5 * rng.standard_normal((30, 8))
    emb = (rng.standard_normal((len(labels), 8)) + centres[labels]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ours = retrieval_metrics(emb, labels)
    theirs = _pml(emb, labels, k)
    assert 0.05 < ours["map@r"] < 0.95  # a case where ranking matters
    assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)


def test_pytorch_metric_learning_with_small_k_gets_map_at_r_wrong() -> None:
    """Why the cross-check uses k='max_bin_count': with k below the largest class, PML truncates R."""
    rng = np.random.default_rng(12)
    labels = np.repeat(np.arange(10), 5)
    emb = rng.standard_normal((50, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ours = retrieval_metrics(emb, labels)
    assert _pml(emb, labels, 1)["mean_average_precision_at_r"] != pytest.approx(ours["map@r"], abs=1e-3)


def test_bootstrap_intervals_cover_the_estimate_and_pair_the_difference() -> None:
    from training.metrics import bootstrap_intervals

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(40), 3)
    centres = rng.standard_normal((40, 8))
    good = centres[labels] + 0.3 * rng.standard_normal((120, 8))
    bad = rng.standard_normal((120, 8))
    good /= np.linalg.norm(good, axis=1, keepdims=True)
    bad /= np.linalg.norm(bad, axis=1, keepdims=True)
    m_good, m_bad = retrieval_metrics(good, labels), retrieval_metrics(bad, labels)
    ci = bootstrap_intervals(m_good, m_bad, n_boot=500)
    for key in ("recall@1", "map@r"):
        lo, hi = ci[key]
        assert lo <= m_good[key] <= hi and hi - lo > 0
        dlo, dhi = ci[f"{key} diff"]
        assert dlo > 0  # clearly better, on the same people
        assert dlo <= m_good[key] - m_bad[key] <= dhi
    # Same encoder twice: the paired difference is exactly zero in every draw.
    same = bootstrap_intervals(m_good, m_good, n_boot=200)
    assert same["map@r diff"] == (0.0, 0.0)
    with pytest.raises(InvalidInput, match="other queries"):
        bootstrap_intervals(m_good, retrieval_metrics(good[:60], labels[:60]))
