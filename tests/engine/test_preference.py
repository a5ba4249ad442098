"""The learned two-sided preference (engine.learned.model) and its serving through recommend()."""

from __future__ import annotations

import numpy as np
import pytest

from engine.compatibility import Profile
from engine.errors import InvalidInput
from engine.feedback import Event, record_feedback
from engine.learned.fit import fit_preference
from engine.learned.model import auc, congestion_factor, predict
from engine.learned.rebuild import load_model_global, rebuild_preferences
from engine.learned.served import served_model
from engine.recommend import recommend
from engine.schema import user_point_id
from engine.settings import Settings
from engine.store import Store
from tests.engine.test_recommend import db, put_users, random_population  # noqa: F401 - db is a fixture

__all__ = ["db"]


def _log(n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A simulated log in an aspiration-like world: everyone prefers appeal q, appealing people aim higher,
    pickiness varies; the vectors carry looks and q (what a good photo encoder could see)."""
    rng = np.random.default_rng(seed)
    q = rng.random(n)
    looks = rng.normal(size=(n, 14))
    v = np.column_stack([0.5 * looks, np.cos(np.pi * q / 2), np.sin(np.pi * q / 2)]).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    pick = rng.normal(size=n)
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    keep = a != b
    a, b = a[keep], b[keep]
    logit = -0.5 + pick[a] + 3.0 * (q[b] - 0.5) - 2.0 * np.maximum(0.0, 1.25 * q[a] - q[b])
    like = rng.random(a.size) < 1 / (1 + np.exp(-logit))
    return v, a, b, like, q


def test_learned_model_beats_photo_only_on_held_out_auc() -> None:
    n = 300
    v, a, b, like, _ = _log(n, 15_000, seed=1)
    test = np.random.default_rng(2).random(a.size) < 0.2
    model = fit_preference([f"u{i}" for i in range(n)], v, a[~test], b[~test], like[~test])
    learned = auc(predict(model, a[test], b[test], v), like[test])
    photo = auc(np.einsum("ij,ij->i", v[a[test]], v[b[test]]), like[test])
    assert learned > 0.72 and learned > photo + 0.15, (learned, photo)
    w = dict(zip(("bias", "pickiness", "appeal"), model.weights[:3], strict=False))
    assert w["pickiness"] > 0 and w["appeal"] > 0  # learned: easy likers like, appealing people are liked


def test_passes_lower_a_score() -> None:
    n = 200
    v, a, b, like, _ = _log(n, 8_000, seed=3)
    ids = [f"u{i}" for i in range(n)]
    viewer, target = 0, 1
    base = fit_preference(ids, v, a, b, like)
    # The viewer passes the ten users closest to the target (not the target itself).
    near = [int(j) for j in np.argsort(-(v @ v[target])) if j not in (viewer, target)][:10]
    a2 = np.r_[a, np.full(10, viewer)]
    b2 = np.r_[b, near]
    after = fit_preference(ids, v, a2, b2, np.r_[like, np.zeros(10, bool)])
    p0 = predict(base, np.array([viewer]), np.array([target]), v)[0]
    p1 = predict(after, np.array([viewer]), np.array([target]), v)[0]
    assert p1 < p0, (p0, p1)


def test_bad_log_is_refused() -> None:
    v = np.eye(3, dtype=np.float32)
    with pytest.raises(InvalidInput, match="out of range"):
        fit_preference(["a", "b", "c"], v, np.array([0]), np.array([5]), np.array([True]))
    with pytest.raises(InvalidInput, match="same length"):
        fit_preference(["a", "b", "c"], v, np.array([0, 1]), np.array([1]), np.array([True]))


def test_congestion_factor_penalises_only_the_overloaded() -> None:
    f = congestion_factor(np.array([0, 10, 40]), periods=2.0, capacity=10.0, strength=1.0)
    assert f.tolist() == [1.0, 1.0, 0.5]
    assert congestion_factor(np.array([100]), 1.0, 0.0, 1.0).tolist() == [1.0]  # 0 = off


def test_rebuild_then_recommend_serves_what_the_log_taught(db: tuple[Store, Settings]) -> None:
    store, settings = db
    people = random_population(80, seed=5)
    put_users(store, people)
    store.optimize()
    assert load_model_global(store) is None  # no model: the photo engine serves
    profiles = {p["user_id"]: Profile.from_payload(p) for p in people}
    asker = people[0]["user_id"]
    first = recommend(asker, 10, store=store, settings=settings)
    assert len(first) >= 6
    star, dud = first[-1].user_id, first[0].user_id
    # Everyone who may see them decides: the star is liked by all, the dud passed by all; others random.
    rng = np.random.default_rng(0)
    events = []
    for u, pu in profiles.items():
        for c, pc in profiles.items():
            if u == c or not pu.compatible(pc) or asker in (u, c):  # nothing logged about the asker
                continue
            d = "like" if c == star else "pass" if c == dud else ("like" if rng.random() < 0.4 else "pass")
            events.append(Event(u, c, d, 1.0))
    record_feedback(store, events)
    report = rebuild_preferences(store, settings)
    assert report.users == 80 and report.events == len(events)
    assert report.weights["appeal"] > 0
    assert load_model_global(store) is not None
    served = served_model(store)
    assert served is not None and user_point_id(star) in served.index  # the star's statistics are served
    star_likes = served.side(served.rows([user_point_id(star)]))["likes_received"][0]
    assert star_likes == sum(1 for e in events if e.candidate_id == star)
    after = {m.user_id: m for m in recommend(asker, 10, store=store, settings=settings)}
    assert star in after  # the whole log likes them: the asker is expected to like them most
    assert after[star].score_a_to_b == max(m.score_a_to_b for m in after.values())
    assert dud not in after or after[dud].rank > after[star].rank
    assert all(0.0 <= m.score_a_to_b <= 1.0 and 0.0 <= m.score_b_to_a <= 1.0 for m in after.values())
    # Exposure control: the star receives more likes per period than a capacity of 1 can answer.
    busy = settings.model_copy(
        update={"recommend": settings.recommend.model_copy(update={"congestion_capacity": 1.0})}
    )
    damped = {m.user_id: m for m in recommend(asker, 10, store=store, settings=busy)}
    assert star not in damped or damped[star].score < after[star].score
    photo = settings.model_copy(update={"recommend": settings.recommend.model_copy(update={"model": "photo"})})
    assert [m.user_id for m in recommend(asker, 10, store=store, settings=photo)][0] == first[0].user_id
