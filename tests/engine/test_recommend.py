"""recommend(): constraints on both sides, exclusions, order, k, the reciprocal rerank and likes, on a real
embedded store (Edge and qdrant-client local mode). Vectors are built with numpy so constructed cases are
exact; one test runs the real ingestion on the demo data."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.errors import InvalidInput, NoUserVector, UserNotFound
from engine.likes import record_likes
from engine.reciprocity.blocks import kth_of_points
from engine.reciprocity.blocks import stored as stored_stats
from engine.reciprocity.full import refresh
from engine.reciprocity.topk import exact_kth
from engine.recommend import Match, explain_empty, recommend, recommend_many, score_candidates
from engine.schema import PHOTOS, USERS, photo_point_id, user_point_id
from engine.settings import Settings
from engine.store import Store, open_store
from engine.store.base import Point
from tests.engine.stores import embedded_store

DIM = 16


@pytest.fixture(params=["edge", "local"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Settings]]:
    """An empty store set up for ``DIM``-d vectors, with small reciprocity K, per embedded backend."""
    yield from embedded_store(tmp_path, request.param, DIM, reciprocity_k=5, oversample=10)


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def put_users(store: Store, users: Sequence[dict]) -> None:
    """Write users and their photos (dicts from ``user()``); user vector = normalised mean of the photos."""
    photo_points, user_points = [], []
    for u in users:
        pids = []
        for j, vec in enumerate(u["photos"]):
            pid = photo_point_id(u["user_id"], f"sha{j}")
            pids.append(pid)
            payload = {k: u[k] for k in ("user_id", "gender", "age")} | {"encoder_id": "test-encoder"}
            photo_points.append(Point(id=pid, vector=unit(vec), payload=payload))
        mean = unit(np.mean([unit(p) for p in u["photos"]], axis=0))
        payload = {k: u[k] for k in ("user_id", "gender", "age", "seeking", "age_min", "age_max")}
        payload.update(n_photos=len(pids), photo_ids=pids, encoder_id="test-encoder")
        user_points.append(Point(id=user_point_id(u["user_id"]), vector=mean, payload=payload))
    store.upsert(PHOTOS, photo_points)
    store.upsert(USERS, user_points)


def user(
    uid: str,
    gender: str,
    age: int,
    vec: np.ndarray,
    *,
    seeking: Sequence[str] | None = None,
    window: tuple[int, int] = (18, 99),
    rng: np.random.Generator | None = None,
    n_photos: int = 2,
) -> dict:
    rng = rng or np.random.default_rng(abs(hash(uid)) % 2**32)
    vec = unit(vec)
    photos = [unit(vec + 0.02 * rng.standard_normal(len(vec))) for _ in range(n_photos)]
    other = {"female": "male", "male": "female"}.get(gender, "female")
    return {
        "user_id": uid, "gender": gender, "age": age, "seeking": list(seeking or [other]),
        "age_min": window[0], "age_max": window[1], "photos": photos,
    }


def random_population(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    genders = ["female", "male", "nonbinary"]
    out = []
    for i in range(n):
        g = str(rng.choice(genders, p=[0.45, 0.45, 0.1]))
        age = int(rng.integers(18, 60))
        seeking = sorted(set(rng.choice(genders, size=int(rng.integers(1, 3)), replace=False).tolist()))
        lo = max(18, age - int(rng.integers(2, 15)))
        hi = age + int(rng.integers(2, 15))
        vec = rng.standard_normal(DIM)
        out.append(user(f"u{i:03d}", g, age, vec, seeking=seeking, window=(lo, hi), rng=rng))
    return out


def both_accept(a: dict, b: dict) -> bool:
    """Written here, independently of engine.compatibility: each side's gender and age constraints."""
    a_ok = b["gender"] in a["seeking"] and a["age_min"] <= b["age"] <= a["age_max"]
    b_ok = a["gender"] in b["seeking"] and b["age_min"] <= a["age"] <= b["age_max"]
    return a_ok and b_ok


def test_matches_satisfy_both_sides_and_respect_exclude_order_and_k(db: tuple[Store, Settings]) -> None:
    store, settings = db
    people = random_population(150, seed=3)
    put_users(store, people)
    store.optimize()
    refresh(store, settings)
    by_id = {p["user_id"]: p for p in people}
    checked = 0
    for asker in people[:25]:
        compatible = [p["user_id"] for p in people if p is not asker and both_accept(asker, p)]
        exclude = compatible[:2]
        k = 7
        matches = recommend(asker["user_id"], k, exclude=exclude, store=store, settings=settings)
        ids = [m.user_id for m in matches]
        assert asker["user_id"] not in ids
        assert not set(ids) & set(exclude)
        assert len(ids) == len(set(ids))
        # Every compatible user fits in the oversampled candidate set here, so the count is exact.
        assert len(matches) == min(k, len(compatible) - len(exclude))
        for m in matches:
            assert both_accept(asker, by_id[m.user_id]), (asker["user_id"], m.user_id)
        scores = [m.score for m in matches]
        assert scores == sorted(scores, reverse=True)
        assert [m.rank for m in matches] == list(range(1, len(matches) + 1))
        for m in matches:
            assert 0.0 <= m.score <= 1.0 and 0.0 <= m.score_a_to_b <= 1.0 and 0.0 <= m.score_b_to_a <= 1.0
            assert m.best_photo_id in {photo_point_id(m.user_id, f"sha{j}") for j in range(2)}
        checked += len(matches)
    assert checked > 50  # the population is not so constrained that the checks above ran on nothing


def test_recommend_many_equals_single_calls(db: tuple[Store, Settings]) -> None:
    store, settings = db
    people = random_population(80, seed=5)
    put_users(store, people)
    refresh(store, settings)
    ids = [p["user_id"] for p in people[:6]]
    many = recommend_many(ids, 5, store=store, settings=settings)
    assert list(many) == ids
    for u in ids:
        single = recommend(u, 5, store=store, settings=settings)
        assert [m.user_id for m in many[u]] == [m.user_id for m in single]
        np.testing.assert_allclose([m.score for m in many[u]], [m.score for m in single], rtol=1e-5)


def reciprocity_case() -> tuple[list[dict], dict[str, np.ndarray]]:
    """A (female) seeks men. B is A's nearest man, but B sits in a dense crowd of women (D0..D9) who are all
    closer to him than A is: A is far down B's list. C is a little less similar to A, and A is C's nearest."""
    e = np.eye(DIM, dtype=np.float32)
    rng = np.random.default_rng(0)
    vec = {
        "A": unit(e[0]),
        "B": unit(e[0] + 0.30 * e[1]),
        "C": unit(e[0] + 0.40 * e[2]),
    }
    people = [
        user("A", "female", 30, vec["A"]),
        user("B", "male", 31, vec["B"]),
        user("C", "male", 32, vec["C"]),
    ]
    for i in range(10):
        # Close to B, far from A and C (strong e1 component), women seeking men, compatible with B and C.
        v = unit(e[0] + 0.4 * e[1] + 0.03 * rng.standard_normal(DIM))
        vec[f"D{i}"] = v
        people.append(user(f"D{i}", "female", 30, v))
    return people, vec


def test_rerank_demotes_one_sided_nearest_neighbour(db: tuple[Store, Settings]) -> None:
    store, settings = db
    people, vec = reciprocity_case()
    put_users(store, people)
    refresh(store, settings)
    # Preconditions of the construction, computed here in numpy: B is A's nearest, A is outside B's top-5.
    assert vec["A"] @ vec["B"] > vec["A"] @ vec["C"]
    b_list = sorted((vec["B"] @ vec[w] for w in vec if w.startswith("D") or w == "A"), reverse=True)
    assert b_list.index(vec["B"] @ vec["A"]) >= 5
    c_list = sorted((vec["C"] @ vec[w] for w in vec if w.startswith("D") or w == "A"), reverse=True)
    assert c_list.index(vec["C"] @ vec["A"]) == 0

    plain = settings.model_copy(
        update={"recommend": settings.recommend.model_copy(update={"reciprocity_weight": 0.0})}
    )
    without = recommend("A", 2, store=store, settings=plain)
    assert [m.user_id for m in without] == ["B", "C"]  # appeal alone is symmetric here: B first

    matches = recommend("A", 2, store=store, settings=settings)
    assert [m.user_id for m in matches] == ["C", "B"]
    b = next(m for m in matches if m.user_id == "B")
    assert b.score_b_to_a < b.score_a_to_b  # the one-sided direction is B's
    # The stored statistic behind it: B's 5th neighbour is closer to B than A is; C's is not.
    got = store.retrieve(USERS, [user_point_id(u) for u in "ABC"], with_vectors=True)
    stats = stored_stats(store)
    assert stats is not None  # the statistics live in their blocks (engine.reciprocity.blocks)
    kth = {p.payload["user_id"]: float(stats.kth_of([p.id])[0]) for p in got}
    v = {p.payload["user_id"]: np.asarray(p.vector) for p in got}
    assert kth["B"] > float(v["A"] @ v["B"]) + 0.02
    assert kth["C"] < float(v["A"] @ v["C"]) - 0.02


def test_refresh_matches_exact_numpy_kth(db: tuple[Store, Settings]) -> None:
    from engine.compatibility import Profile

    store, settings = db
    people = random_population(120, seed=11)
    put_users(store, people)
    first = refresh(store, settings)
    assert first.users == 120 and first.rewritten == 120 and first.skipped == 0
    assert refresh(store, settings).rewritten == 0  # nothing changed: nothing rewritten
    points = {p.payload["user_id"]: p for p in store.scroll(USERS, with_vectors=True)}
    ids = [p["user_id"] for p in people]
    vectors = np.stack([np.asarray(points[u].vector) for u in ids]).astype(np.float32)
    profiles = [Profile.from_payload(points[u].payload) for u in ids]
    expected = exact_kth(vectors, profiles, settings.recommend.reciprocity_k)
    got = kth_of_points(store, [points[u].id for u in ids], [points[u].payload for u in ids])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.sum(expected > -1) > 30  # most users have K compatible neighbours: the comparison is real


def likes_case() -> tuple[list[dict], list[str], list[str]]:
    """Asker A (male) and two groups of women: X near A, Y a bit further along another direction."""
    e = np.eye(DIM, dtype=np.float32)
    rng = np.random.default_rng(1)
    people = [user("A", "male", 40, e[0])]
    xs, ys = [], []
    for i in range(6):
        people.append(user(f"X{i}", "female", 40, e[0] + 0.5 * e[1] + 0.1 * rng.standard_normal(DIM)))
        xs.append(f"X{i}")
        people.append(user(f"Y{i}", "female", 40, e[0] + 0.8 * e[2] + 0.1 * rng.standard_normal(DIM)))
        ys.append(f"Y{i}")
    return people, xs, ys


def mean_rank(matches: list[Match], group: list[str]) -> float:
    ranks = {m.user_id: m.rank for m in matches}
    return float(np.mean([ranks.get(u, len(matches) + 1) for u in group]))


def test_likes_move_the_list_toward_what_was_liked(db: tuple[Store, Settings]) -> None:
    store, settings = db
    people, xs, ys = likes_case()
    put_users(store, people)
    refresh(store, settings)
    liked = ys[:2]
    before = recommend("A", 8, exclude=liked, store=store, settings=settings)
    after = recommend("A", 8, exclude=liked, likes=liked, store=store, settings=settings)
    assert before[0].user_id in xs
    assert mean_rank(after, ys[2:]) < mean_rank(before, ys[2:])
    # A's own direction now prefers the liked look (the reverse direction still favours X, who look like A).
    assert max(after, key=lambda m: m.score_a_to_b).user_id in ys
    assert max(before, key=lambda m: m.score_a_to_b).user_id in xs

    # A stored history does the same; an explicit empty one overrides it.
    record_likes(store, "A", liked, settings=settings)
    stored = recommend("A", 8, exclude=liked, store=store, settings=settings)
    assert [m.user_id for m in stored] == [m.user_id for m in after]
    overridden = recommend("A", 8, exclude=liked, likes=[], store=store, settings=settings)
    assert [m.user_id for m in overridden] == [m.user_id for m in before]
    # refresh() keeps the history and recomputes the same taste from it.
    refresh(store, settings)
    again = recommend("A", 8, exclude=liked, store=store, settings=settings)
    assert [m.user_id for m in again] == [m.user_id for m in after]


def test_bad_input(db: tuple[Store, Settings]) -> None:
    store, settings = db
    people, _ = reciprocity_case()
    put_users(store, people)
    with pytest.raises(UserNotFound, match="nobody"):
        recommend("nobody", store=store, settings=settings)
    with pytest.raises(UserNotFound, match="ghost"):
        recommend("A", likes=["ghost"], store=store, settings=settings)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="k"):
            recommend("A", bad, store=store, settings=settings)
    with pytest.raises(InvalidInput, match="themselves"):
        record_likes(store, "A", ["A"], settings=settings)
    # Photos stored but no user vector (ingestion writes no users point then): a clear NoUserVector.
    store.upsert(
        PHOTOS,
        [
            Point(
                id=photo_point_id("E", "x"),
                vector=unit(np.ones(DIM)),
                payload={"user_id": "E", "gender": "male", "age": 30},
            )
        ],
    )
    with pytest.raises(NoUserVector, match="'E'"):
        recommend("E", store=store, settings=settings)


def test_nobody_passes_the_filters_gives_empty_list_and_a_reason(db: tuple[Store, Settings]) -> None:
    store, settings = db
    e = np.eye(DIM, dtype=np.float32)
    put_users(
        store,
        [
            user("lonely", "female", 70, e[0], window=(65, 80)),
            user("young", "male", 25, e[1], window=(18, 99)),
            user("picky", "male", 68, e[2], seeking=["nonbinary"]),
        ],
    )
    assert recommend("lonely", store=store, settings=settings) == []
    reason = explain_empty("lonely", store=store)
    assert "none is aged 65-80" in reason or "none of the" in reason
    # Everyone compatible excluded: also empty, and the reason says so.
    put_users(store, [user("match", "male", 70, e[3], window=(60, 80))])
    assert [m.user_id for m in recommend("lonely", store=store, settings=settings)] == ["match"]
    assert recommend("lonely", exclude=["match"], store=store, settings=settings) == []
    assert "excluded" in explain_empty("lonely", exclude=["match"], store=store)


def test_cli_recommend_json_and_empty_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from matcher.cli import main

    store_path = tmp_path / "cli-store"
    monkeypatch.setenv("MATCHER_RECOMMEND__RECIPROCITY_K", "5")  # the CLI reads settings from the environment
    settings = Settings(store_path=store_path, store_backend="edge", progress=False)
    assert settings.recommend.reciprocity_k == 5
    people, _ = reciprocity_case()
    people.append(user("hermit", "male", 90, np.eye(DIM)[5], window=(90, 99)))
    with open_store(settings) as store:
        store.setup("test-encoder", DIM)
        put_users(store, people)
        refresh(store, settings)
    args = ["--store", str(store_path), "--backend", "edge", "--no-progress", "recommend"]
    assert main([*args, "A", "--k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["user_id"] for m in out] == ["C", "B"]
    assert {"user_id", "score", "score_a_to_b", "score_b_to_a", "best_photo_id", "rank"} <= set(out[0])
    assert main([*args, "A", "--k", "1"]) == 0
    assert "C" in capsys.readouterr().out
    assert main([*args, "hermit"]) == 0
    captured = capsys.readouterr()
    assert "no match" in captured.out and "hermit" in captured.out
    assert main([*args, "nobody"]) == 2
    assert "nobody" in capsys.readouterr().err
    # Without store=, recommend() opens the store the settings name and closes it again (reopenable after).
    assert [m.user_id for m in recommend("A", 2, settings=settings)] == ["C", "B"]
    assert [m.user_id for m in recommend("A", 2, settings=settings)] == ["C", "B"]


def test_merged_likes_keeps_each_id_once_newest_last_and_caps() -> None:
    from engine.likes import merged_likes

    assert merged_likes(["a", "b", "c"], ["b", "d"], 10) == ["a", "c", "b", "d"]
    assert merged_likes(["a", "b", "c"], ["d"], 2) == ["c", "d"]
    assert merged_likes(["a"], ["b"], 0) == []


def test_demo_data_end_to_end_constraints(demo_dir: Path, tiny_encoder: Any, tmp_path: Path) -> None:
    """The real ingestion (tiny Qwen3-VL encoder) on the demo data, then recommend() for every user; the
    constraints are checked against metadata.csv read here, with the documented defaults."""
    import csv

    from ingestion.job import run_ingest

    settings = Settings(store_path=tmp_path / "demo-store", progress=False)
    report = run_ingest(demo_dir, demo_dir / "metadata.csv", settings=settings, encoder=tiny_encoder)
    assert report.reciprocity_refreshed  # the job ran engine.reciprocity.full.refresh

    people: dict[str, dict] = {}
    with open(demo_dir / "metadata.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            g = row["gender"].strip().lower()
            default = {"female": ["male"], "male": ["female"]}.get(g, ["female", "male", "nonbinary"])
            people[row["user_id"]] = {
                "user_id": row["user_id"],
                "gender": g,
                "age": int(row["age"]),
                "seeking": [s.strip().lower() for s in row["seeking"].split("|") if s.strip()] or default,
                "age_min": int(row["age_min"]) if row["age_min"].strip() else settings.min_age,
                "age_max": int(row["age_max"]) if row["age_max"].strip() else settings.max_age,
            }
    with open_store(settings) as store:
        stored = {p.payload["user_id"] for p in store.scroll(USERS)}
        assert stored and stored <= set(people)
        results = recommend_many(sorted(stored), 5, store=store, settings=settings)
        photo_owner = {p.id: p.payload["user_id"] for p in store.scroll(PHOTOS)}
        blocks = stored_stats(store)  # every user's statistics, in their blocks
        assert blocks is not None and (blocks.rows([p.id for p in store.scroll(USERS)]) >= 0).all()
    shown = 0
    for uid, matches in results.items():
        compatible = [v for v in stored if v != uid and both_accept(people[uid], people[v])]
        assert len(matches) == min(5, len(compatible))
        for m in matches:
            assert m.user_id != uid and both_accept(people[uid], people[m.user_id])
            assert m.best_photo_id is not None and photo_owner[m.best_photo_id] == m.user_id  # their own
        assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)
        shown += len(matches)
    assert shown > 0


def test_score_candidates_gives_the_scores_recommend_ranks_by(db: tuple[Store, Settings]) -> None:
    """Scoring given pairs (replay, explanations) is recommend()'s own stage 2, not a re-derivation."""
    store, settings = db
    people = random_population(80, seed=11)
    put_users(store, people)
    refresh(store, settings)  # the stored K-th similarities score_candidates uses
    for asker in people[:5]:
        matches = recommend(asker["user_id"], 6, store=store, settings=settings)
        ids = [m.user_id for m in matches]
        scored = score_candidates(asker["user_id"], [*reversed(ids), "nobody"], store=store, settings=settings)
        assert set(scored) == set(ids)  # unknown ids are left out
        assert [scored[u].rank for u in ids] == list(range(1, len(ids) + 1))
        for m in matches:
            s = scored[m.user_id]
            np.testing.assert_allclose(
                [s.score, s.score_a_to_b, s.score_b_to_a], [m.score, m.score_a_to_b, m.score_b_to_a], atol=1e-4
            )
            assert s.best_photo_id == m.best_photo_id
