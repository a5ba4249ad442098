from __future__ import annotations

import math

import pytest
import torch

from engine.errors import InvalidInput
from training.losses import BatchHardTripletLoss, SupConLoss, build_loss


def _unit(*angles_deg: float) -> torch.Tensor:
    a = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([torch.cos(a), torch.sin(a)], dim=1)


# Four points on the unit circle; identities 0, 0, 1, 1.
ANGLES = (0.0, 60.0, 30.0, 180.0)
LABELS = torch.tensor([0, 0, 1, 1])


def test_batch_hard_mining_picks_hardest_positive_and_negative() -> None:
    emb = _unit(*ANGLES)
    a, p, n = BatchHardTripletLoss().mine(emb, LABELS)
    got = {int(i): (int(j), int(k)) for i, j, k in zip(a, p, n, strict=True)}
    # Anchor 0 (0 deg): positive 1 (60 deg, its only one); hardest negative is 2 (30 deg), not 3 (180 deg).
    # Anchor 1 (60 deg): negative 2 (30 deg away). Anchor 2 (30 deg): nearest other-identity is 0 or 1 (both
    # 30 deg away), positive 3. Anchor 3 (180 deg): nearest negative is 1 (120 deg) over 0 (180 deg).
    assert got[0] == (1, 2)
    assert got[1] == (0, 2)
    assert got[2][0] == 3 and got[2][1] in (0, 1)
    assert got[3] == (2, 1)


def test_triplet_loss_matches_hand_computed_value() -> None:
    emb = _unit(*ANGLES)
    margin = 0.2

    def d(x: float) -> float:  # cosine distance between points x degrees apart
        return 1 - math.cos(math.radians(x))

    expected = (
        max(0.0, d(60) - d(30) + margin)  # anchor 0: p=60 deg, n=30 deg
        + max(0.0, d(60) - d(30) + margin)  # anchor 1
        + max(0.0, d(150) - d(30) + margin)  # anchor 2: p=3 (150 deg away), n at 30 deg
        + max(0.0, d(150) - d(120) + margin)  # anchor 3: p=2 (150 deg), n=1 (120 deg)
    ) / 4
    loss = BatchHardTripletLoss(margin=margin)(emb, LABELS)
    assert float(loss) == pytest.approx(expected, abs=1e-9)
    # Euclidean distance on the sphere: sqrt(2 - 2 cos).
    e = lambda x: math.sqrt(2 - 2 * math.cos(math.radians(x)))  # noqa: E731
    expected_e = (
        2 * max(0.0, e(60) - e(30) + margin)
        + max(0.0, e(150) - e(30) + margin)
        + max(0.0, e(150) - e(120) + margin)
    ) / 4
    loss_e = BatchHardTripletLoss(margin=margin, distance="euclidean")(emb, LABELS)
    assert float(loss_e) == pytest.approx(expected_e, abs=1e-9)


def test_triplet_loss_is_zero_when_separated_by_more_than_the_margin() -> None:
    emb = _unit(0.0, 5.0, 180.0, 185.0)
    assert float(BatchHardTripletLoss(margin=0.5)(emb, LABELS)) == 0.0


def test_supcon_matches_hand_computed_value() -> None:
    emb = _unit(*ANGLES)
    t = 0.5
    sim = emb @ emb.T
    expected = 0.0
    for i in range(4):
        others = [j for j in range(4) if j != i]
        pos = [j for j in others if LABELS[j] == LABELS[i]]
        denom = torch.logsumexp(sim[i, others] / t, dim=0)
        expected += -float(sum(sim[i, j] / t - denom for j in pos) / len(pos))
    expected /= 4
    assert float(SupConLoss(temperature=t)(emb, LABELS)) == pytest.approx(expected, rel=1e-6)


def test_combined_loss_is_the_weighted_sum_and_reports_parts() -> None:
    emb = _unit(*ANGLES)
    combo = build_loss(["supcon", "triplet"], weights=[1.0, 2.0], temperature=0.5, margin=0.2)
    total = float(combo(emb, LABELS))
    parts = combo.last_parts
    assert set(parts) == {"supcon", "triplet"}
    assert total == pytest.approx(parts["supcon"] + 2 * parts["triplet"], rel=1e-6)


def test_losses_give_gradients() -> None:
    emb = _unit(*ANGLES).requires_grad_(True)
    build_loss(["supcon", "triplet"])(emb, LABELS).backward()
    assert emb.grad is not None and float(emb.grad.abs().sum()) > 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kinds": ["arcface"]}, "unknown loss"),
    ({"kinds": ["triplet", "triplet"]}, "twice"),
    ({"kinds": ["triplet"], "weights": [1.0, 2.0]}, "weights"),
    ({"kinds": ["supcon"], "temperature": 0.0}, "temperature"),
])
def test_bad_loss_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        build_loss(**kwargs)
