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
          model's blocks). ``rebuild_total_s`` is the whole command's time. ``--store DIR`` keeps the laid
          store (a folder laid before is re-used: only the rebuild runs); ``--lay-only`` stops after laying,
          ``--rebuild-only`` rebuilds a folder as it is (e.g. one whose laying was stopped).

    OMP_NUM_THREADS=2 python bench/rebuild.py --skip-fit --store-users 100000 --store-events 10000000 \
        --optimize-every 500000 --store /tmp/rebuild10m --progress
"""

from __future__ import annotations

import argparse
import json
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


def feedback_point_ids(ids: list[str], a: np.ndarray, b: np.ndarray) -> list[str]:
    """``engine.feedback.feedback_point_id(ids[a[i]], ids[b[i]])`` for every i, computed with ``hashlib`` (the
    uuid5 construction spelled out: SHA-1 of namespace + name, version and variant bits): ~2x faster than
    ``uuid.uuid5`` (which builds two ``UUID`` objects per call); a test checks the ids are equal."""
    import hashlib
    import uuid

    from engine.feedback import _NAMESPACE

    ns, sha1, out = _NAMESPACE.bytes, hashlib.sha1, []
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        h = bytearray(sha1(ns + f"{ids[x]}\x1f{ids[y]}".encode()).digest()[:16])
        h[6] = (h[6] & 0x0F) | 0x50
        h[8] = (h[8] & 0x3F) | 0x80
        out.append(str(uuid.UUID(bytes=bytes(h))))
    return out


def lay_feedback(
    store: object,
    ids: list[str],
    a: np.ndarray,
    b: np.ndarray,
    like: np.ndarray,
    chunk: int = 20_000,
    optimize_every: int = 0,
    *,
    progress: bool = False,
) -> float:
    """Write the decisions straight into the ``feedback`` collection as ``record_feedback`` stores them (same
    point ids, placeholder vector and payloads; ``ts`` = viewer index mod 97), in bulk upserts of ``chunk``
    points: no per-event check or read-before-write, which a bench laying down millions of fresh, unique
    pairs does not need. ``optimize_every`` > 0 calls ``store.optimize()`` after each that many points, as a
    live store gets between batches (without it Edge keeps the whole log in its appendable segment: ~1.3 KB
    resident per decision here, with the three keyword indexes). Prints a JSON line per optimize (or per
    ``chunk`` with ``progress``). Returns seconds."""
    from engine.feedback import _PLACEHOLDER, LIKE, PASS
    from engine.schema import FEEDBACK
    from engine.store import Point

    t, cpu = time.perf_counter(), time.process_time()
    opt_s = 0.0
    for s in range(0, a.size, chunk):
        e = min(a.size, s + chunk)
        pids = feedback_point_ids(ids, a[s:e], b[s:e])
        pts = [
            Point(pid, _PLACEHOLDER,
                  {"viewer_id": ids[x], "candidate_id": ids[y], "decision": LIKE if lk else PASS, "ts": float(x % 97)})
            for pid, x, y, lk in zip(pids, a[s:e].tolist(), b[s:e].tolist(), like[s:e].tolist(), strict=True)
        ]  # fmt: skip
        store.upsert(FEEDBACK, pts)  # type: ignore[attr-defined]
        optimized = optimize_every > 0 and e // optimize_every > s // optimize_every
        if optimized:
            t0 = time.perf_counter()
            store.optimize()  # type: ignore[attr-defined]
            opt_s += time.perf_counter() - t0
        if optimized or progress:
            row = {"laid": e, "s": round(time.perf_counter() - t, 1), "optimize_s": round(opt_s, 1),
                   "cpu_s": round(time.process_time() - cpu, 1), "rss_mb": round(_rss_mb()),
                   "rss_anon_mb": round(_rss_mb("RssAnon"))}  # fmt: skip
            print(json.dumps(row), flush=True)
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


def _open(path: Path, progress: bool) -> tuple[object, object]:
    """The bench's Edge store at ``path`` and its settings. Users get no HNSW graph (an indexing threshold
    above their size): a rebuild only scrolls them, and building the graph inside the first ``optimize()``
    of the log is what made laying look like 1,440 decisions/s (laying alone: 8,500-9,800/s here)."""
    from engine.settings import Settings
    from engine.store.edge import EdgeStore

    settings = Settings(store_path=path, progress=progress)  # type: ignore[call-arg]
    return EdgeStore.open(settings, indexing_threshold_kb=10**9), settings


def build_store(args: argparse.Namespace, path: Path) -> dict[str, float]:
    """Write ``--store-users`` users and lay ``--store-events`` decisions into a new store at ``path``."""
    from engine.schema import USERS, user_point_id
    from engine.store import Point

    n, m = args.store_users, args.store_events
    v, a, b, like = synthetic_log(n, m, args.dim, args.seed)
    # One decision per pair, as the feedback collection keeps it.
    _, first = np.unique(a.astype(np.int64) * n + b, return_index=True)
    a, b, like = a[first], b[first], like[first]
    store, _ = _open(path, args.progress)
    try:
        store.setup("bench", args.dim)  # type: ignore[attr-defined]
        ids = [f"u{i}" for i in range(n)]
        t = time.perf_counter()
        for s in range(0, n, 1000):
            store.upsert(USERS, [  # type: ignore[attr-defined]
                Point(id=user_point_id(ids[i]), vector=v[i],
                      payload={"user_id": ids[i], "gender": "female" if i % 2 else "male", "age": 30,
                               "seeking": ["male" if i % 2 else "female"], "age_min": 18, "age_max": 99})
                for i in range(s, min(n, s + 1000))
            ])  # fmt: skip
        users_s = time.perf_counter() - t
        del v
        lay_s = lay_feedback(store, ids, a, b, like, args.chunk, args.optimize_every, progress=args.progress)
        rss_laid = _rss_mb()
        t = time.perf_counter()
        store.optimize()  # type: ignore[attr-defined]
        optimize_s = time.perf_counter() - t
    finally:
        store.close()  # type: ignore[attr-defined]
    return {"store_users": n, "store_events": int(a.size), "write_users_s": users_s, "lay_feedback_s": lay_s,
            "lay_events_per_s": a.size / lay_s, "final_optimize_s": optimize_s, "rss_after_lay_mb": rss_laid,
            "peak_rss_lay_mb": _rss_mb("VmHWM")}  # fmt: skip


def bench_store(args: argparse.Namespace) -> dict[str, float]:
    """Lay the store (unless ``--store`` names one already laid), then time ``rebuild_preferences`` on it."""
    import tempfile

    from engine.learned.rebuild import rebuild_preferences
    from engine.schema import FEEDBACK

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = args.store or Path(tmp) / "q"
        if not (path / ".laid").is_file() and not args.rebuild_only:
            out.update(build_store(args, path))
            (path / ".laid").write_text(json.dumps(out))
            if args.lay_only:
                return out
        _reset_peak()
        store, settings = _open(path, args.progress)
        try:
            out["store_events"] = store.count(FEEDBACK)  # type: ignore[attr-defined]
            rss_open = _rss_mb()
            t = time.perf_counter()
            rep = rebuild_preferences(store, settings)  # type: ignore[arg-type]
            total = time.perf_counter() - t
        finally:
            store.close()  # type: ignore[attr-defined]
    out.update({"rss_opened_mb": rss_open, "rebuild_total_s": total, "rss_after_rebuild_mb": _rss_mb(),
                "peak_rss_rebuild_mb": _rss_mb("VmHWM"), "rebuild_users": rep.users,
                "rebuild_events": rep.events})  # fmt: skip
    out.update({f"rebuild_{k}": v for k, v in rep.seconds.items()})
    out["read_events_per_s"] = rep.events / max(rep.seconds["read_s"], 1e-9)
    return out


def _reset_peak() -> None:
    """Reset this process's VmHWM (Linux: write 5 to /proc/self/clear_refs), so the rebuild's peak is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


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
    ap.add_argument(
        "--store",
        type=Path,
        default=None,
        help="keep the laid store in this folder; a folder laid before is reused (no laying)",
    )
    ap.add_argument("--lay-only", action="store_true", help="lay the store (with --store) and stop")
    ap.add_argument("--rebuild-only", action="store_true", help="rebuild on the --store folder as it is (no laying)")
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
