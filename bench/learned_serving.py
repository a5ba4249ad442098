"""Benchmarks of the learned model's serving path on a store that
``bench/recommend.py --users N --backend edge --model --workdir DIR --keep`` built (``DIR/edge-N``): the
figures of docs/benchmarks.md's "recommend() serving the learned model" section that the other benches do
not print.

``latency``      p50 / p90 of ``recommend()`` over ``--calls`` askers after 10 warm-up calls (run it once per
                 code version on copies of the same store to compare versions back to back).
``profile``      cProfile of ``--calls`` ``recommend()`` calls: cumulative ms per call of each stage.
``incremental``  ``record_feedback(..., update_model=False)`` then ``update_preferences`` for random batches
                 of 100, 1,000 and 10,000 decisions (what ``matcher feedback`` does in one call).
``rebuild``      ``rebuild_preferences`` (what ``matcher rebuild-model`` runs) on the store as it is.

    OMP_NUM_THREADS=1 python bench/learned_serving.py latency STORE --users 10000

Users are the bench's ``user_NNNNNN`` ids; ``--users`` says how many the store holds. Prints one line per
figure with the load average.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
from pathlib import Path

import numpy as np

from engine.feedback import Event, record_feedback
from engine.learned.rebuild import rebuild_preferences, update_preferences
from engine.recommend import recommend
from engine.settings import Settings
from engine.store import open_store
from engine.store.base import Store

# (function name, file) of the stages the profile reports.
STAGES = (
    ("load_askers", "askers.py"),
    ("around", "feedback.py"),
    ("around_cached", "feedback_cache.py"),
    ("popular_leg", "user_copies.py"),
    ("popular_rows", "user_copies.py"),
    ("_merged_pool", "recommend.py"),
    ("query_hits", "edge.py"),
    ("_hit_ids", "edge.py"),
    ("kept_vectors", "user_copies.py"),
    ("unit_rows", "user_copies.py"),
    ("asker_points", "user_copies.py"),
    ("model_rows", "served_ids.py"),
    ("_with_logged_replies_rows", "matches.py"),
    ("photo_ids", "user_copies.py"),
    ("served_model", "served.py"),
    ("_stage1", "recommend.py"),
    ("_learned_matches", "matches.py"),
    ("_photo_similarity", "matches.py"),
    ("_candidate_user_ids", "matches.py"),
    ("served_probabilities_arrays", "model.py"),
    ("_best_photos", "matches.py"),
    ("retrieve", "edge.py"),
    ("scroll_payload", "edge.py"),
    ("retrieve_vectors", "edge.py"),
    ("query", "edge.py"),
)


def _askers(users: int, n: int, seed: int = 1) -> list[str]:
    return [f"user_{i:06d}" for i in np.random.default_rng(seed).choice(users, n, replace=False)]


def latency(store: Store, settings: Settings, users: int, calls: int) -> None:
    ids = _askers(users, calls + 10)
    for u in ids[:10]:
        recommend(u, 20, store=store, settings=settings)
    lat = []
    for u in ids[10:]:
        t = time.perf_counter()
        recommend(u, 20, store=store, settings=settings)
        lat.append((time.perf_counter() - t) * 1e3)
    print(f"recommend() p50 {np.percentile(lat, 50):.2f} ms, p90 {np.percentile(lat, 90):.2f} ms over {calls} calls")


def profile(store: Store, settings: Settings, users: int, calls: int) -> None:
    ids = _askers(users, calls + 10)
    for u in ids[:10]:
        recommend(u, 20, store=store, settings=settings)
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    for u in ids[10:]:
        recommend(u, 20, store=store, settings=settings)
    prof.disable()
    total = time.perf_counter() - t
    print(f"per call {total / calls * 1e3:.2f} ms (profiled)")
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    for (path, _, name), row in stats.items():
        if (name, Path(path).name) in STAGES:
            print(f"  {name:30s} {row[3] / calls * 1e3:7.2f} ms/call cumulative ({row[1]} calls)")


def incremental(store: Store, users: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for size in (100, 1_000, 10_000):
        a, b = rng.integers(0, users, size), rng.integers(0, users, size)
        events = [
            Event(f"user_{x:06d}", f"user_{y:06d}", "like" if rng.random() < 0.3 else "pass", 50.0)
            for x, y in zip(a, b, strict=True)
            if x != y
        ]
        t = time.perf_counter()
        rep = record_feedback(store, events, require_known=False, update_model=False)
        t_record = time.perf_counter() - t
        t = time.perf_counter()
        upd = update_preferences(store, rep.touched_users)
        t_update = time.perf_counter() - t
        if upd is None:
            raise SystemExit("the store holds no learned model: build it with bench/recommend.py --model")
        print(
            f"batch {len(events)} events: record {t_record:.2f} s, incremental update {t_update:.2f} s "
            f"({upd.users} users, {upd.events} decisions read)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("latency", "profile", "incremental", "rebuild"))
    ap.add_argument("store", type=Path, help="an Edge store folder built by bench/recommend.py --model")
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--calls", type=int, default=140)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    settings = Settings(store_path=args.store, store_backend="edge", progress=False)  # type: ignore[call-arg]
    store = open_store(settings)
    try:
        if args.what == "latency":
            latency(store, settings, args.users, args.calls)
        elif args.what == "profile":
            profile(store, settings, args.users, args.calls)
        elif args.what == "incremental":
            incremental(store, args.users, args.seed)
        else:
            t = time.perf_counter()
            rep = rebuild_preferences(store, settings)
            print(f"rebuild: {rep.users} users, {rep.events} decisions, {time.perf_counter() - t:.1f} s")
    finally:
        store.close()
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
