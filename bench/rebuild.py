"""Benchmark of the learned preference model's full rebuild (``engine.learning.rebuild_preferences``).

Two parts, in one run:

``fit``   ``engine.preference.fit_preference`` on a synthetic log held in numpy: ``--users`` users with
          ``--dim``-d unit vectors, ``--events`` likes and passes (viewers and candidates drawn at random,
          like probability from a hidden appeal and pickiness). Timed whole (both passes: the held-out fit
          of the weights and the full statistics).
``store`` the end-to-end rebuild against an embedded Edge store of ``--store-users`` users holding
          ``--store-events`` decisions in its ``feedback`` collection: read (scroll of users and feedback),
          fit, write (per-user payloads and the shared point). The read is per event, so its rate is printed
          to project the full size.

    OMP_NUM_THREADS=2 python bench/rebuild.py --users 100000 --events 10000000 --store-users 10000 \\
        --store-events 500000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_log(users: int, events: int, dim: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((users, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    appeal = rng.normal(size=users)
    pick = rng.normal(size=users)
    a = rng.integers(0, users, events)
    b = rng.integers(0, users, events)
    b = np.where(a == b, (b + 1) % users, b)
    like = rng.random(events) < 1 / (1 + np.exp(-(-0.3 + pick[a] + appeal[b])))
    return v, a, b, like


def bench_fit(args: argparse.Namespace) -> dict[str, float]:
    from engine.preference import fit_preference

    t = time.perf_counter()
    v, a, b, like = synthetic_log(args.users, args.events, args.dim, args.seed)
    gen = time.perf_counter() - t
    t = time.perf_counter()
    fit_preference([f"u{i}" for i in range(args.users)], v, a, b, like)
    return {"users": args.users, "events": args.events, "dim": args.dim, "generate_s": gen,
            "fit_s": time.perf_counter() - t}  # fmt: skip


def bench_store(args: argparse.Namespace) -> dict[str, float]:
    from engine.feedback import LIKE, PASS, Event, record_feedback
    from engine.learning import rebuild_preferences
    from engine.schema import USERS, user_point_id
    from engine.settings import Settings
    from engine.store import Point, open_store

    n, m = args.store_users, args.store_events
    v, a, b, like = synthetic_log(n, m, args.dim, args.seed)
    # One decision per pair, as the feedback collection keeps it.
    _, first = np.unique(a.astype(np.int64) * n + b, return_index=True)
    a, b, like = a[first], b[first], like[first]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(store_path=Path(tmp) / "q", progress=False)  # type: ignore[call-arg]
        store = open_store(settings)
        store.setup("bench", args.dim)
        ids = [f"u{i}" for i in range(n)]
        pts = [
            Point(id=user_point_id(u), vector=v[i],
                  payload={"user_id": u, "gender": "female" if i % 2 else "male", "age": 30,
                           "seeking": ["male" if i % 2 else "female"], "age_min": 18, "age_max": 99})
            for i, u in enumerate(ids)
        ]  # fmt: skip
        for s in range(0, n, 1000):
            store.upsert(USERS, pts[s : s + 1000])
        t = time.perf_counter()
        events = [Event(ids[x], ids[y], LIKE if lk else PASS, 0.0) for x, y, lk in zip(a, b, like, strict=True)]
        for s in range(0, len(events), 50_000):
            record_feedback(store, events[s : s + 50_000], require_known=False)
        record_s = time.perf_counter() - t
        store.optimize()
        rep = rebuild_preferences(store, settings)
        store.close()
    out = {"store_users": n, "store_events": int(a.size), "record_s": record_s}
    out.update({f"rebuild_{k}": v for k, v in rep.seconds.items()})
    out["read_events_per_s"] = a.size / max(rep.seconds["read_s"], 1e-9)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--store-users", type=int, default=10_000)
    ap.add_argument("--store-events", type=int, default=500_000)
    ap.add_argument("--skip-fit", action="store_true")
    ap.add_argument("--skip-store", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = []
    if not args.skip_fit:
        rows.append(bench_fit(args))
    if not args.skip_store:
        rows.append(bench_store(args))
    for r in rows:
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    main()
