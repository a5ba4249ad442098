"""Benchmark of the learned preference model's full rebuild (``engine.learned.rebuild.rebuild_preferences``).

Two parts, in one run:

``fit``   ``engine.learned.fit.fit_preference`` on a synthetic log held in numpy: ``--users`` users with
          ``--dim``-d unit vectors, ``--events`` likes and passes (viewers and candidates drawn at random,
          like probability from a hidden appeal and pickiness). Timed whole (both passes: the held-out fit
          of the weights and the full statistics).
``store`` the end-to-end rebuild (``rebuild_preferences``, what ``matcher rebuild-model`` runs) against an
          embedded Edge store of ``--store-users`` users holding ``--store-events`` decisions in its
          ``feedback`` collection, laid down by bulk upserts of the points ``record_feedback`` would write
          (``lay_feedback``): read (users with vectors, the feedback payloads into arrays), fit, write (the
          model's blocks). ``rebuild_total_s`` is the whole command's time.

    OMP_NUM_THREADS=2 python bench/rebuild.py --skip-fit --store-users 100000 --store-events 10000000
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
    from engine.learned.fit import fit_preference

    t = time.perf_counter()
    v, a, b, like = synthetic_log(args.users, args.events, args.dim, args.seed)
    gen = time.perf_counter() - t
    t = time.perf_counter()
    fit_preference([f"u{i}" for i in range(args.users)], v, a, b, like)
    return {"users": args.users, "events": args.events, "dim": args.dim, "generate_s": gen,
            "fit_s": time.perf_counter() - t}  # fmt: skip


def lay_feedback(
    store: object, ids: list[str], a: np.ndarray, b: np.ndarray, like: np.ndarray, chunk: int, optimize_every: int = 0
) -> float:
    """Write the decisions straight into the ``feedback`` collection as ``record_feedback`` stores them (same
    point ids and payloads), in bulk upserts of ``chunk`` points: no per-event check or read-before-write,
    which a bench laying down millions of fresh, unique pairs does not need. ``optimize_every`` > 0 calls
    ``optimize()`` after each that many points (as a live store gets between batches; without it Edge keeps
    the whole log in its appendable segment, 10 GB resident at ~5 M decisions here). Returns seconds."""
    from engine.feedback import LIKE, PASS, feedback_point_id
    from engine.schema import FEEDBACK
    from engine.store import Point

    one = np.ones(1, np.float32)
    t = time.perf_counter()
    for s in range(0, a.size, chunk):
        pts = [
            Point(feedback_point_id(ids[x], ids[y]), one,
                  {"viewer_id": ids[x], "candidate_id": ids[y], "decision": LIKE if lk else PASS, "ts": float(x % 97)})
            for x, y, lk in zip(a[s : s + chunk].tolist(), b[s : s + chunk].tolist(), like[s : s + chunk].tolist(),
                                strict=True)
        ]  # fmt: skip
        store.upsert(FEEDBACK, pts)  # type: ignore[attr-defined]
        done = s + len(pts)
        if optimize_every > 0 and done // optimize_every > s // optimize_every:
            store.optimize()  # type: ignore[attr-defined]
            print(json.dumps({"laid": done, "s": round(time.perf_counter() - t, 1), "rss_mb": _rss_mb()}), flush=True)
    return time.perf_counter() - t


def _rss_mb(key: str = "VmRSS") -> float:
    """This process's resident set now (``VmHWM``: its peak), MB (Linux /proc; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def bench_store(args: argparse.Namespace) -> dict[str, float]:
    from engine.learned.rebuild import rebuild_preferences
    from engine.schema import USERS, user_point_id
    from engine.settings import Settings
    from engine.store import Point, open_store

    n, m = args.store_users, args.store_events
    v, a, b, like = synthetic_log(n, m, args.dim, args.seed)
    # One decision per pair, as the feedback collection keeps it.
    _, first = np.unique(a.astype(np.int64) * n + b, return_index=True)
    a, b, like = a[first], b[first], like[first]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        settings = Settings(store_path=Path(tmp) / "q", progress=args.progress)  # type: ignore[call-arg]
        store = open_store(settings)
        store.setup("bench", args.dim)
        ids = [f"u{i}" for i in range(n)]
        t = time.perf_counter()
        for s in range(0, n, 1000):
            store.upsert(USERS, [
                Point(id=user_point_id(ids[i]), vector=v[i],
                      payload={"user_id": ids[i], "gender": "female" if i % 2 else "male", "age": 30,
                               "seeking": ["male" if i % 2 else "female"], "age_min": 18, "age_max": 99})
                for i in range(s, min(n, s + 1000))
            ])  # fmt: skip
        users_s = time.perf_counter() - t
        lay_s = lay_feedback(store, ids, a, b, like, args.chunk, args.optimize_every)
        rss_laid = _rss_mb()
        t = time.perf_counter()
        store.optimize()
        optimize_s = time.perf_counter() - t
        t = time.perf_counter()
        rep = rebuild_preferences(store, settings)
        total = time.perf_counter() - t
        rss_rebuilt, peak = _rss_mb(), _rss_mb("VmHWM")
        store.close()
    out = {"store_users": n, "store_events": int(a.size), "write_users_s": users_s, "lay_feedback_s": lay_s,
           "lay_events_per_s": a.size / lay_s, "optimize_s": optimize_s, "rebuild_total_s": total,
           "rss_after_lay_mb": rss_laid, "rss_after_rebuild_mb": rss_rebuilt, "peak_rss_mb": peak}  # fmt: skip
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
    ap.add_argument("--chunk", type=int, default=20_000, help="feedback points per bulk upsert")
    ap.add_argument("--optimize-every", type=int, default=0, help="optimize() after each N feedback points laid")
    ap.add_argument("--workdir", type=Path, default=None, help="the store's temporary folder goes here")
    ap.add_argument("--progress", action="store_true", help="show the rebuild's progress bars")
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
