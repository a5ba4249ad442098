"""Statistics on inputs small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InvalidInput
from evaluation.stats import (
    Estimate,
    auc,
    average_ranks,
    bootstrap_ci,
    bootstrap_weights,
    gini,
    gini_rows,
    lift,
    ratio_estimate,
)


def test_gini_hand_values() -> None:
    assert gini(np.array([1, 1, 1, 1])) == pytest.approx(0.0)
    # One holds everything: (n - 1) / n.
    assert gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)
    # [1, 2, 3]: mean absolute difference over all ordered pairs = 8/9, mean 2 -> G = (8/9) / (2 * 2) = 2/9.
    assert gini(np.array([3, 1, 2])) == pytest.approx(2 / 9)
    assert gini(np.zeros(5)) == 0.0
    # Scale-free.
    assert gini(np.array([3.0, 1.0, 2.0]) * 10) == pytest.approx(2 / 9)


def test_gini_rows_matches_scalar() -> None:
    x = np.random.default_rng(0).integers(0, 9, size=(4, 7))
    assert gini_rows(x) == pytest.approx([gini(r) for r in x])


def test_gini_rejects_negative_and_empty() -> None:
    with pytest.raises(InvalidInput, match="non-negative"):
        gini(np.array([1.0, -1.0]))
    with pytest.raises(InvalidInput, match="no values"):
        gini(np.array([]))


def test_average_ranks_ties() -> None:
    assert average_ranks(np.array([10, 20, 20, 5])).tolist() == [2.0, 3.5, 3.5, 1.0]


def test_auc_hand_values() -> None:
    assert auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    # (pos, neg) pairs: 0.5>0.1 win, 0.5=0.5 tie (1/2), 0.3>0.1 win, 0.3<0.5 loss -> 2.5 / 4.
    assert auc(np.array([0.5, 0.3, 0.1, 0.5]), np.array([1, 1, 0, 0])) == pytest.approx(0.625)
    # All tied: 1/2.
    assert auc(np.ones(6), np.array([1, 0, 1, 0, 0, 1])) == pytest.approx(0.5)


def test_auc_matches_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, 300).astype(float)  # many ties
    y = rng.random(300) < 0.3
    assert auc(s, y) == pytest.approx(roc_auc_score(y, s))


def test_auc_errors() -> None:
    with pytest.raises(InvalidInput, match="both classes"):
        auc(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(InvalidInput, match="2 scores but 3 labels"):
        auc(np.array([0.1, 0.2]), np.array([1, 0, 1]))


def test_lift() -> None:
    assert lift(0.3, 0.2) == pytest.approx(1.5)
    assert np.isnan(lift(0.3, 0.0))


def test_bootstrap_ci_sanity() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(5.0, 2.0, 400)
    est = bootstrap_ci(lambda idx: float(x[idx].mean()), x.size, n_boot=800, seed=3)
    assert est.value == pytest.approx(x.mean())
    assert est.lo < est.value < est.hi
    # Width close to the normal theory interval 2 * 1.96 * sd / sqrt(n).
    assert est.hi - est.lo == pytest.approx(2 * 1.96 * x.std() / np.sqrt(x.size), rel=0.2)
    # Seeded: the same seed gives the same interval, another seed another one.
    again = bootstrap_ci(lambda idx: float(x[idx].mean()), x.size, n_boot=800, seed=3)
    assert again == est
    assert bootstrap_ci(lambda idx: float(x[idx].mean()), x.size, n_boot=800, seed=4) != est


def test_bootstrap_constant_statistic_has_zero_width() -> None:
    est = bootstrap_ci(lambda idx: 1.0, 10, n_boot=50, seed=0)
    assert est == Estimate(1.0, 1.0, 1.0)


def test_bootstrap_weights_resample_units() -> None:
    w = bootstrap_weights(7, 100, seed=0)
    assert w.shape == (100, 7)
    assert np.all(w.sum(axis=1) == 7)  # each draw holds n units
    assert np.array_equal(w, bootstrap_weights(7, 100, seed=0))


def test_ratio_estimate_clusters() -> None:
    # Two viewers: 1 like of 2 shown, 3 of 4. Pooled rate 4/6.
    est = ratio_estimate(np.array([1.0, 3.0]), np.array([2.0, 4.0]), bootstrap_weights(2, 500, seed=0))
    assert est.value == pytest.approx(4 / 6)
    # Any resample is a mix of the two viewers' rates, so the interval lies within [1/2, 3/4].
    assert 0.5 - 1e-12 <= est.lo <= est.value <= est.hi <= 0.75 + 1e-12
