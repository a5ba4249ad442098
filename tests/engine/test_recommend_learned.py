"""The learned model as stored and served (engine.learned.served, engine.learned.rebuild): the ranking recommend()
serves equals the model's own scores computed from first principles, the served copy is never stale
(feedback batches, rebuilds, erasures), and an incremental update gives what a full rebuild gives for the
users it touches, without rewriting the others."""

from __future__ import annotations

import numpy as np
import pytest

from engine.compatibility import Profile
from engine.feedback import Event, decision_arrays, record_feedback
from engine.learned.fit import fit_preference, like_logit
from engine.learned.model import SideStats, served_probabilities
from engine.learned.rebuild import _config, _users, rebuild_preferences, update_preferences
from engine.learned.served import BLOCK_KEY, chunk_point_id, decode, forget, patch_point_id, read_version, served_model
from engine.ranking.rerank import aggregate
from engine.recommend import recommend
from engine.schema import LEGACY_MODEL_FIELDS, LEGACY_MODEL_STATS, LEGACY_MODEL_TASTE, META, USERS, user_point_id
from engine.settings import Settings
from engine.store import Store
from engine.users import delete_user
from tests.engine.test_recommend import db, put_users, random_population  # noqa: F401 - db is a fixture

__all__ = ["db"]


def _world(store: Store, n: int = 60, seed: int = 3) -> tuple[list[dict], list[Event]]:
    """``n`` users and a log: every compatible pair decided, likes from a hidden appeal."""
    people = random_population(n, seed=seed)
    put_users(store, people)
    store.optimize()
    profiles = {p["user_id"]: Profile.from_payload(p) for p in people}
    rng = np.random.default_rng(seed)
    appeal = {u: rng.normal() for u in profiles}
    events = [
        Event(u, c, "like" if rng.random() < 1 / (1 + np.exp(-appeal[c])) else "pass", float(rng.integers(0, 5)))
        for u, pu in profiles.items()
        for c, pc in profiles.items()
        if u != c and pu.compatible(pc) and rng.random() < 0.7
    ]
    return people, events


def test_served_ranking_equals_the_models_own_scores(db: tuple[Store, Settings]) -> None:
    """Pins the order: recommend() from the stored blocks ranks exactly as the fitted model scores the
    asker's compatible users with per-user ``SideStats`` (the pre-blocks serving path), fused as the learned
    path fuses (``learned_aggregation``, ``reverse_exponent``),
    with the candidates' logged decisions about the asker replacing s(B→A)."""
    store, settings = db
    people, events = _world(store)
    asker = people[0]["user_id"]
    events = [e for e in events if e.viewer_id != asker]  # the asker has no history: their row is the cold one
    events.append(Event(people[1]["user_id"], asker, "like", 9.0))
    record_feedback(store, events)
    rebuild_preferences(store, settings)
    # The reference: the same fit, scored without the store's serving code.
    ids, _, vectors, _ = _users(store)
    index = {u: i for i, u in enumerate(ids)}
    v, c, like, ts = decision_arrays(store, index)
    model = fit_preference(
        ids, vectors, v, c, like, config=_config(settings), ts=ts, period_s=settings.preference.period_s
    )
    shared = model.global_payload()
    side = [SideStats.from_payload(model.user_payload(i)) for i in range(len(ids))]
    me = Profile.from_payload(people[0])
    cands = [p["user_id"] for p in people[1:] if me.compatible(Profile.from_payload(p))]
    ib = np.array([index[u] for u in cands])
    ia = index[asker]
    photo = vectors[ib] @ vectors[ia]
    fwd, rev = served_probabilities(shared, side[ia], [side[i] for i in ib], photo.astype(np.float64))
    about = {e.viewer_id: e.decision for e in events if e.candidate_id == asker}
    rev = np.array(
        [
            1.0 if about.get(u) == "like" else 0.0 if about.get(u) == "pass" else r
            for u, r in zip(cands, rev, strict=True)
        ]
    )
    rs = settings.recommend
    score = aggregate(fwd, rev, rs.learned_aggregation, rs.reverse_exponent)
    want = [cands[i] for i in np.argsort(-score, kind="stable")[:10]]
    got = recommend(asker, 10, store=store, settings=settings)
    assert [m.user_id for m in got] == want
    np.testing.assert_allclose([m.score for m in got], np.sort(score)[::-1][:10], rtol=1e-5)
    assert people[1]["user_id"] not in want or got[want.index(people[1]["user_id"])].score_b_to_a == 1.0


def _rows(store: Store, user_ids: list[str]) -> dict[str, dict[str, np.ndarray]]:
    sm = served_model(store)
    assert sm is not None
    out = {}
    for u in user_ids:
        r = sm.index[user_point_id(u)]
        s = sm.side(np.array([r]))
        out[u] = {k: np.asarray(v[0]) for k, v in s.items()} | {"taste_r": sm.taste[r].astype(np.float64)}
    return out


def test_incremental_update_equals_a_full_rebuild_for_the_touched_users(db: tuple[Store, Settings]) -> None:
    store, settings = db
    people, events = _world(store)
    first, batch = events[: len(events) - 40], events[len(events) - 40 :]
    record_feedback(store, first)
    rebuild_preferences(store, settings)
    before = served_model(store)
    assert before is not None
    gen0, stats0 = before.gen, before.stats.copy()
    touched = sorted({u for e in batch for u in (e.viewer_id, e.candidate_id)})
    untouched = [p["user_id"] for p in people if p["user_id"] not in touched]
    assert untouched

    rep = record_feedback(store, batch)  # the incremental update runs inside
    assert rep.touched_users == frozenset(touched)
    version = read_version(store)
    assert version is not None and version[1] == gen0 + 1
    # Only the touched users' rows were written: the patch holds exactly them.
    (patch,) = store.retrieve(META, [patch_point_id(version[0], version[1])])
    assert sorted(patch.payload[BLOCK_KEY]["point_ids"]) == sorted(user_point_id(u) for u in touched)
    served = served_model(store)
    assert served is before  # the same copy, patched in place: no reload
    rows_untouched = [served.index[user_point_id(u)] for u in untouched]
    np.testing.assert_array_equal(served.stats[rows_untouched], stats0[rows_untouched])
    incremental = _rows(store, touched)

    rebuild_preferences(store, settings)
    full = _rows(store, touched)
    after = served_model(store)
    assert after is not None
    # Between the two, only the population's like rate and taste (the smoothing targets) differ: the update
    # keeps the last rebuild's until the next one. Everything per user must be what the full fit computes.
    m, shrink = settings.preference.prior_weight, settings.preference.taste_shrink
    p_old, p_new = before.shared["like_rate"], after.shared["like_rate"]
    prior_old = np.asarray(before.shared["taste_prior"])
    prior_new = np.asarray(after.shared["taste_prior"])
    assert p_old != p_new  # the batch moved them: the check below is not trivially true
    logged = first + batch
    for u in touched:
        a, b = incremental[u], full[u]
        given = [e.decision == "like" for e in logged if e.viewer_id == u]
        received = [e.decision == "like" for e in logged if e.candidate_id == u]
        likes, passes = sum(given), len(given) - sum(given)
        assert a["n"].tolist() == b["n"].tolist() == [len(given), len(received), sum(received)], u
        for side, p0 in ((a, p_old), (b, p_new)):
            np.testing.assert_allclose(side["pickiness"], like_logit(likes, len(given), p0, m), atol=1e-5)
            np.testing.assert_allclose(side["appeal"], like_logit(sum(received), len(received), p0, m), atol=1e-5)
        eff = 2 * likes * passes / (likes + passes) if likes and passes else 0.0
        np.testing.assert_allclose(
            a["taste_r"] - b["taste_r"], shrink / (eff + shrink) * (prior_old - prior_new), atol=2e-5, err_msg=u
        )


def test_the_served_copy_is_never_stale(db: tuple[Store, Settings]) -> None:
    store, settings = db
    people, events = _world(store)
    record_feedback(store, events[:-10])
    rebuild_preferences(store, settings)
    asker = people[0]["user_id"]
    recommend(asker, 5, store=store, settings=settings)  # loads the copy
    copy = served_model(store)
    assert copy is not None
    # A feedback batch: the next call serves the patched rows, equal to a fresh load's.
    record_feedback(store, events[-10:])
    patched = served_model(store)
    assert patched is copy and patched.gen == 1
    forget(store)
    fresh = served_model(store)
    assert fresh is not None and fresh is not copy
    order = [fresh.index[p] for p in patched.point_ids]
    np.testing.assert_array_equal(patched.stats, fresh.stats[order])
    np.testing.assert_array_equal(patched.taste, fresh.taste[order])
    # A rebuild: a new model id, the old blocks gone, the copy replaced.
    old_id = fresh.model_id
    rebuild_preferences(store, settings)
    new = served_model(store)
    assert new is not None and new.model_id != old_id and new is not fresh
    assert store.retrieve(META, [chunk_point_id(old_id, 0), patch_point_id(old_id, 1)]) == []


@pytest.mark.parametrize("db", ["edge"], indirect=True)
def test_delete_user_leaves_no_row_in_the_model(db: tuple[Store, Settings]) -> None:
    store, settings = db
    people, events = _world(store, n=40)
    record_feedback(store, events)
    rebuild_preferences(store, settings)
    gone = people[3]["user_id"]
    record_feedback(store, [e for e in events if gone in (e.viewer_id, e.candidate_id)][:1])  # a patch naming them
    sm = served_model(store)
    assert sm is not None and user_point_id(gone) in sm.index
    delete_user(store, gone, settings=settings)
    after = served_model(store)
    assert after is not None and user_point_id(gone) not in after.index  # reloaded without them
    version = read_version(store)
    assert version is not None
    ids = [chunk_point_id(version[0], i) for i in range(int(after.shared["chunks"]))]
    ids += [patch_point_id(version[0], g) for g in range(1, version[1] + 1)]
    for p in store.retrieve(META, ids):
        block = p.payload[BLOCK_KEY]
        assert user_point_id(gone) not in block["point_ids"] and gone not in block["user_ids"]
        assert decode(block["stats"]).shape[0] == len(block["point_ids"])
    assert update_preferences(store, []) is None  # nothing touched: nothing written


def test_a_rebuild_removes_the_legacy_model_payloads(db: tuple[Store, Settings]) -> None:
    """Users points that still carry the per-user model payloads of the first stored format lose exactly
    those two keys at the next full rebuild; the rest of their payload stays."""
    store, settings = db
    people, events = _world(store, n=30, seed=5)
    record_feedback(store, events)
    old = [user_point_id(p["user_id"]) for p in people[:4]]
    legacy = {LEGACY_MODEL_STATS: {"appeal": 0.2}, LEGACY_MODEL_TASTE: [0.1, 0.3]}
    store.set_payload(USERS, dict.fromkeys(old, legacy))
    before = {p.id: dict(p.payload) for p in store.retrieve(USERS, old)}
    assert sorted(_users(store)[3]) == sorted(old)
    rebuild_preferences(store, settings)
    assert _users(store)[3] == []
    for p in store.retrieve(USERS, old):
        expected = {k: v for k, v in before[p.id].items() if k not in LEGACY_MODEL_FIELDS}
        assert dict(p.payload) == expected and len(expected) == len(before[p.id]) - 2
