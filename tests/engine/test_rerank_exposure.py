"""Stage 2's fusion by expected mutual match and its exposure control (engine/ranking/rerank.py,
engine/ranking/exposure.py), and recommend() honouring an impression budget and cold-start slots through an
ExposureLedger."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InvalidInput
from engine.feedback import Event, record_feedback
from engine.learned.rebuild import rebuild_preferences
from engine.ranking.exposure import ExposureLedger, ExposurePolicy, choose, fresh_mask, select, urgency
from engine.ranking.rerank import aggregate
from engine.reciprocity.full import refresh
from engine.recommend import recommend
from engine.settings import Settings
from engine.store import Store
from tests.engine.test_recommend import DIM, db, put_users, user  # noqa: F401 - db is a fixture

__all__ = ["db"]


def test_product_fusion_orders_by_expected_mutual_match() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random(200), rng.random(200)
    score = aggregate(a, b, "product")
    np.testing.assert_allclose(score, a * b)
    assert np.array_equal(np.argsort(-score, kind="stable"), np.argsort(-(a * b), kind="stable"))
    # The harmonic mean ranks a balanced pair above a likelier mutual match; the product does not.
    fwd, rev = np.array([0.9, 0.4]), np.array([0.4, 0.8])  # expected mutual 0.36 vs 0.32
    assert np.argmax(aggregate(fwd, rev, "product")) == 0
    assert np.argmax(aggregate(fwd, rev, "harmonic")) == 1 or aggregate(fwd, rev, "harmonic")[0] > 0


def test_reverse_exponent_weighs_the_reply() -> None:
    fwd, rev = np.array([0.9, 0.5]), np.array([0.4, 0.7])  # 0.36 vs 0.35: the eager viewer's pick wins at 1
    assert np.argmax(aggregate(fwd, rev, "product", 1.0)) == 0
    assert np.argmax(aggregate(fwd, rev, "product", 2.0)) == 1  # the likelier reply wins at 2
    with pytest.raises(InvalidInput, match="reverse_exponent"):
        aggregate(fwd, rev, "product", -1.0)


def test_budget_puts_over_budget_candidates_last() -> None:
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    seen = np.array([3, 0, 3, 0, 0])
    picks = select(score, 3, ExposurePolicy(budget=3), period_impressions=seen)
    assert picks.tolist() == [1, 3, 4]
    # Too few under budget: the over-budget ones fill the list rather than leave it short, best first.
    picks = select(score, 4, ExposurePolicy(budget=3), period_impressions=np.array([3, 3, 3, 0, 3]))
    assert picks.tolist() == [3, 0, 1, 2]
    assert select(score, 2, ExposurePolicy(budget=3)).tolist() == [0, 1]  # no ledger: plain top-k


def test_explore_slots_take_the_best_fresh_candidates() -> None:
    score = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    received = np.array([50, 50, 50, 0, 0])  # the last two are new: no decision received yet
    seen = np.zeros(5, dtype=np.int64)
    picks = select(score, 3, ExposurePolicy(explore_slots=1, explore_min=10), period_impressions=seen,
                   decisions_received=received)  # fmt: skip
    assert picks.tolist() == [0, 1, 3]  # one slot for the best fresh one, shown in score order
    # Once a newcomer has had explore_min impressions this period, they are no longer fresh.
    seen[3] = 10
    picks = select(score, 3, ExposurePolicy(explore_slots=1, explore_min=10), period_impressions=seen,
                   decisions_received=received)  # fmt: skip
    assert picks.tolist() == [0, 1, 4]
    assert fresh_mask(np.array([9, 10, 0]), np.array([0, 0, 10]), 10).tolist() == [True, False, False]
    # A newcomer (no decision received) already shown a few times this period still comes before an
    # established user with a few decisions and no impression yet; newcomers shown enough do not block.
    score = np.array([0.9, 0.8, 0.3, 0.2, 0.1])
    received = np.array([50, 0, 2, 0, 50])
    seen = np.array([0, 10, 0, 3, 0])
    picks = select(score, 2, ExposurePolicy(explore_slots=1, explore_min=10), period_impressions=seen,
                   decisions_received=received)  # fmt: skip
    assert picks.tolist() == [0, 3]
    with pytest.raises(InvalidInput, match="explore_slots"):
        ExposurePolicy(explore_slots=-1)


def test_ledger_counts_periods_and_choose_records() -> None:
    ledger = ExposureLedger()
    ids = ["a", "b", "c"]
    picks = choose(np.array([0.1, 0.9, 0.5]), 2, ExposurePolicy(budget=1), ids, None, ledger)
    assert picks.tolist() == [1, 2]
    assert ledger.period_counts(ids).tolist() == [0, 1, 1]
    picks = choose(np.array([0.1, 0.9, 0.5]), 2, ExposurePolicy(budget=1), ids, None, ledger)
    assert picks.tolist() == [0, 1]  # b and c are at budget: a comes first, then the best of the rest
    ledger.new_period()
    assert ledger.period_counts(ids).tolist() == [0, 0, 0]
    assert ledger.total_counts(ids).tolist() == [1, 2, 1]
    ledger.reset()
    assert ledger.total_counts(ids).tolist() == [0, 0, 0]


def _market(
    store: Store, settings: Settings, n: int = 60, new: int = 4, *, outliers: bool = False
) -> tuple[list[str], list[str]]:
    """n users, half women seeking men and half men seeking women (everyone compatible with the other half);
    a random like/pass log among all but the last ``new`` of each gender (newcomers: no decision either way),
    and the learned model rebuilt from it. ``outliers``: the newcomers' vectors point away from everyone
    else's, so no taste query ranks them high. Returns (all ids, newcomer ids)."""
    rng = np.random.default_rng(3)
    people, first = [], {}
    for i in range(n):
        vec = rng.standard_normal(DIM)
        if outliers and i >= n - 2 * new:  # everyone likes a high first coordinate; newcomers' is the lowest
            vec[0] = -6.0
        first[f"u{i:03d}"] = float(vec[0])
        people.append(user(f"u{i:03d}", "female" if i % 2 else "male", 30, vec, rng=rng))
    put_users(store, people)
    store.optimize()
    refresh(store, settings)
    ids = [p["user_id"] for p in people]
    newcomers = ids[-2 * new :]
    old = [u for u in ids if u not in newcomers]
    liked = (lambda b: first[b] > 0) if outliers else (lambda b: rng.random() < 0.4)  # noqa: E731
    events = [
        Event(a, b, "like" if liked(b) else "pass", 1.0)
        for a in old
        for b in old
        if (int(a[1:]) + int(b[1:])) % 2 == 1 and rng.random() < 0.5
    ]
    record_feedback(store, events)
    rebuild_preferences(store, settings.model_copy(update={"progress": False}))
    return ids, newcomers


def _with(settings: Settings, **rec: object) -> Settings:
    return settings.model_copy(update={"recommend": settings.recommend.model_copy(update=rec)})


def _serve(ids: list[str], store: Store, settings: Settings, k: int) -> ExposureLedger:
    ledger = ExposureLedger()
    for u in ids:
        recommend(u, k, store=store, settings=settings, exposure=ledger)
    return ledger


def test_recommend_honours_the_impression_budget(db: tuple[Store, Settings]) -> None:
    store, settings = db
    ids, _ = _market(store, settings)
    k, budget = 5, 6  # 30 viewers x 5 slots over 30 candidates per side: 5 each on average, some slack
    settings = _with(settings, exposure_budget=0, explore_slots=0)  # cold-start slots are on by default
    free = _serve(ids, store, settings, k).period_counts(ids)
    assert free.max() > budget  # without a budget the likeliest matches are shown far more often
    capped = _serve(ids, store, _with(settings, exposure_budget=budget), k).period_counts(ids)
    assert capped.sum() == len(ids) * k  # every returned match was recorded, no viewer left short
    assert capped.max() <= budget
    gini = lambda c: float(np.abs(c[:, None] - c[None, :]).mean() / (2 * c.mean()))  # noqa: E731
    assert gini(capped) < gini(free)


def test_recommend_explores_newcomers(db: tuple[Store, Settings]) -> None:
    store, settings = db
    ids, newcomers = _market(store, settings)
    k, need = 5, 5
    settings = _with(settings, exposure_budget=0, explore_slots=0)
    plain = dict(zip(ids, _serve(ids, store, settings, k).period_counts(ids).tolist(), strict=True))
    assert min(plain[u] for u in newcomers) < need  # without exploration some newcomer is shown too little
    s = _with(settings, explore_slots=1, explore_min=need)
    explored = dict(zip(ids, _serve(ids, store, s, k).period_counts(ids).tolist(), strict=True))
    assert min(explored[u] for u in newcomers) >= need  # every newcomer reaches explore_min in their first period


def test_newcomers_outside_every_pool_still_get_their_slots(db: tuple[Store, Settings]) -> None:
    """Stage 1's fresh leg: newcomers whom no asker's taste query would fetch (a pool of k) are still among
    the candidates, so the cold-start slots reach them (without the leg none of them is ever shown)."""
    store, settings = db
    ids, newcomers = _market(store, settings, outliers=True)
    k, need = 5, 5
    settings = _with(settings, exposure_budget=0, oversample=1, learned_pool=1, explore_slots=0)
    plain = _serve(ids, store, settings, k).period_counts(newcomers)
    assert plain.max() == 0  # the pool alone never holds them
    s = _with(settings, explore_slots=1, explore_min=need)
    assert _serve(ids, store, s, k).period_counts(newcomers).min() >= need


def test_slots_go_to_the_newcomer_whose_audience_is_running_out() -> None:
    """A newcomer only 4 viewers may see needs 3 of them; one everyone may see can wait. Served one viewer
    at a time with one slot each, ordering by fewest impressions alone leaves the first short (2 of 3: the
    others' score wins the ties); ordering by urgency (impressions still needed over the audience) shows
    both enough (engine.ranking.exposure.urgency)."""
    policy = ExposurePolicy(explore_slots=1, explore_min=3)
    ids = ["scarce", "plenty", "old"]
    score = np.array([0.2, 0.3, 0.9])
    received = np.array([0, 0, 50])
    audience = {"scarce": 4.0, "plenty": 10.0}

    def serve(with_audience: bool) -> list[int]:
        ledger = ExposureLedger()
        for v in range(10):
            present = [0, 1, 2] if v < 4 else [1, 2]  # viewers 4-9 may not see the scarce newcomer
            sub = [ids[i] for i in present]
            aud = (lambda idx, sub=sub: np.array([audience[sub[i]] for i in idx])) if with_audience else None
            choose(score[present], 2, policy, sub, received[present], ledger, aud)
        return ledger.period_counts(ids[:2]).tolist()

    assert serve(False)[0] < 3  # the old order: the scarce newcomer stays short
    scarce, plenty = serve(True)
    assert scarce == 3 and plenty >= 3
    # urgency itself: need / audience, unknown audiences after every known one, fewest shown first
    urg = urgency(np.array([0, 2, 0, 1]), 3, np.array([4.0, 4.0, np.nan, np.nan]))
    assert urg[0] > urg[1] > urg[2] > urg[3] > 0


def test_audience_sizes_count_the_mutual_filter(db: tuple[Store, Settings]) -> None:
    """The audience of each user equals the brute-force count of the users they are compatible with (gender
    sought both ways, both age windows), is counted once per period (kept in the ledger), and again after
    the period ends."""
    from engine.ranking.audience import audience_sizes
    from engine.schema import USERS, Profile, user_point_id

    store, _ = db
    rng = np.random.default_rng(5)
    people = []
    for i in range(40):
        gender = "female" if i % 3 else "male"
        seeking = ["male"] if i % 4 else ["female", "male"]
        age = int(rng.integers(20, 50))
        lo = int(rng.integers(18, 35))
        people.append(user(f"p{i:02d}", gender, age, rng.standard_normal(DIM), seeking=seeking, window=(lo, lo + 15)))
    put_users(store, people)
    profiles = [
        Profile.from_payload(p.payload) for p in store.retrieve(USERS, [user_point_id(q["user_id"]) for q in people])
    ]
    expected = {a.user_id: sum(a.compatible(b) for b in profiles if b.user_id != a.user_id) for a in profiles}
    assert len(set(expected.values())) > 3  # the audiences differ: the check can tell them apart
    calls = {"n": 0}
    count = store.count

    def counting(*args: object, **kw: object) -> int:
        calls["n"] += 1
        return count(*args, **kw)  # type: ignore[arg-type]

    store.count = counting  # type: ignore[method-assign]
    ledger = ExposureLedger()
    uids = [q["user_id"] for q in people] + ["ghost"]
    pids = [user_point_id(u) for u in uids]
    sizes = audience_sizes(store, pids, uids, ledger)
    assert sizes[:-1].tolist() == [float(expected[u]) for u in uids[:-1]]
    assert np.isnan(sizes[-1])  # not stored: unknown, not zero
    assert calls["n"] == 40
    audience_sizes(store, pids, uids, ledger)
    assert calls["n"] == 40  # kept for the period
    ledger.new_period()
    audience_sizes(store, pids[:3], uids[:3], ledger)
    assert calls["n"] == 43


def test_audiences_are_counted_only_for_candidates_who_can_win_a_slot() -> None:
    """The slots go to the fewest decisions received first: only that tier (down to the slots' count) needs
    an audience, so a call counts a few, not every fresh candidate."""
    asked: list[list[int]] = []

    def audience(idx: np.ndarray) -> np.ndarray:
        asked.append(idx.tolist())
        return np.full(idx.size, 50.0)

    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    received = np.array([50, 4, 0, 4, 7])  # one newcomer (0), two with 4 decisions, one with 7
    ids = ["a", "b", "c", "d", "e"]
    policy = ExposurePolicy(explore_slots=2, explore_min=10)
    picks = choose(score, 3, policy, ids, received, ExposureLedger(), audience)
    assert asked == [[1, 2, 3]]  # the newcomer and the 4-decision tier; not the 7 nor the established user
    # The slots: the newcomer, then the better of the 4-decision tier; then the best of the rest.
    assert picks.tolist() == [0, 1, 2]
    asked.clear()
    full = select(score, 3, policy, period_impressions=np.zeros(5, np.int64), decisions_received=received,
                  audience=audience)  # fmt: skip
    assert asked == [[1, 2, 3]] and full.tolist() == [0, 1, 2]  # select asks the same candidates itself
