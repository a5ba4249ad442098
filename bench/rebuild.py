"""Benchmark of the learned preference model's full rebuild (``engine.learned.rebuild.rebuild_preferences``).

Two parts, in one run:

``fit``   ``engine.learned.fit.fit_preference`` on a synthetic log held in numpy: ``--users`` users with
          ``--dim``-d unit vectors, ``--events`` likes and passes (viewers and candidates drawn at random,
          like probability from a hidden appeal and pickiness). Timed whole (both passes: the held-out fit
          of the weights and the full statistics).
``store`` the end-to-end rebuild (``rebuild_preferences``, what ``matcher rebuild-model`` runs) against an
          embedded Edge store of ``--store-users`` users holding ``--store-events`` decisions in its
          ``feedback`` collection, laid down by bulk upserts of the points ``record_feedback`` would write
          (``lay_feedback``): read (users with vectors, the log), fit, write (the model's blocks), ``--rebuilds``
          times, each in the store opened again. The first rebuild of a freshly laid store reads the feedback
          payloads (the laying went around ``record_feedback``, so the log's columns are missing) and stores
          the columns (``engine.feedback_blocks``); the next ones read the columns (``path`` in each row).
          ``rebuild_total_s`` is the whole command's time. ``--store DIR`` keeps the laid
          store (a folder laid before is re-used: only the rebuilds run); ``--lay-only`` stops after laying,
          ``--rebuild-only`` rebuilds a folder as it is (e.g. one whose laying was stopped).
``columns`` (``--columns-events N``) the log's columns alone: written for N random decisions, then read back
          in the store opened again as a rebuild reads them (a log size too large to lay as feedback points).

    OMP_NUM_THREADS=1 python bench/rebuild.py --skip-fit --store-users 100000 --store-events 1000000 \
        --store /tmp/rebuild1m --progress
    OMP_NUM_THREADS=1 python bench/rebuild.py --skip-store --store-users 100000 --columns-events 10000000
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


def bench_fit(args: argparse.Namespace) -> dict[str, float | str]:
    from engine.learned.fit import fit_preference

    t = time.perf_counter()
    v, a, b, like = synthetic_log(args.users, args.events, args.dim, args.seed)
    gen = time.perf_counter() - t
    _reset_peak()
    t, cpu = time.perf_counter(), time.process_time()
    fit_preference([f"u{i}" for i in range(args.users)], v, a, b, like)
    return {"users": args.users, "events": args.events, "dim": args.dim, "generate_s": gen,
            "fit_s": time.perf_counter() - t, "fit_cpu_s": time.process_time() - cpu,
            "peak_rss_fit_mb": _rss_mb("VmHWM")}  # fmt: skip


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
    keys: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> float:
    """Write the decisions straight into the ``feedback`` collection as ``record_feedback`` stores them (same
    point ids, placeholder vector and payloads; ``ts`` = viewer index mod 97), in bulk upserts of ``chunk``
    points: no per-event check or read-before-write, which a bench laying down millions of fresh, unique
    pairs does not need. ``optimize_every`` > 0 calls ``store.optimize()`` after each that many points, as a
    live store gets between batches (without it Edge keeps the whole log in its appendable segment: ~1.3 KB
    resident per decision here, with the three keyword indexes). Prints a JSON line per optimize (or per
    ``chunk`` with ``progress``). ``keys``: gets each chunk's point ids as (hi, lo) uint64 halves
    (``engine.feedback_blocks.point_keys``), for ``lay_columns``. Returns seconds."""
    from engine.feedback import _PLACEHOLDER, LIKE, PASS
    from engine.feedback_blocks import point_keys
    from engine.schema import FEEDBACK
    from engine.store import Point

    t, cpu = time.perf_counter(), time.process_time()
    opt_s = 0.0
    for s in range(0, a.size, chunk):
        e = min(a.size, s + chunk)
        pids = feedback_point_ids(ids, a[s:e], b[s:e])
        if keys is not None:
            keys.append(point_keys(pids))
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


def lay_columns(
    store: object, ids: list[str], a: np.ndarray, b: np.ndarray, like: np.ndarray,
    keys: list[tuple[np.ndarray, np.ndarray]],
) -> float:  # fmt: skip
    """Store the log's columns (``engine.feedback_blocks``) of the decisions ``lay_feedback`` laid (``keys``: its
    point-id halves), as ``record_feedback`` leaves them: the same rows (sorted by point id, ``ts`` = viewer index
    mod 97) in one set, so the next rebuild reads the columns, not the payloads. ``a``/``b`` index ``ids`` and hold
    one decision per pair. Returns seconds."""
    from engine.feedback import LIKE, PASS
    from engine.feedback_blocks import DECISION_CODES, LogRows, write_set

    t = time.perf_counter()
    hi = np.concatenate([k[0] for k in keys])
    lo = np.concatenate([k[1] for k in keys])
    dec = np.where(like, DECISION_CODES.index(LIKE), DECISION_CODES.index(PASS)).astype(np.int8)
    order = np.lexsort((lo, hi))
    rows = LogRows(list(ids), hi[order], lo[order], a[order].astype(np.int32), b[order].astype(np.int32),
                   dec[order], (a[order] % 97).astype(np.float64))  # fmt: skip
    write_set(store, rows)  # type: ignore[arg-type]
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
        keys: list[tuple[np.ndarray, np.ndarray]] | None = [] if args.lay_columns else None
        lay_s = lay_feedback(store, ids, a, b, like, args.chunk, args.optimize_every, progress=args.progress,
                             keys=keys)  # fmt: skip
        rss_laid = _rss_mb()
        t = time.perf_counter()
        store.optimize()  # type: ignore[attr-defined]
        optimize_s = time.perf_counter() - t
        columns_s = lay_columns(store, ids, a, b, like, keys) if keys is not None else 0.0
    finally:
        store.close()  # type: ignore[attr-defined]
    return {"store_users": n, "store_events": int(a.size), "write_users_s": users_s, "lay_feedback_s": lay_s,
            "lay_events_per_s": a.size / lay_s, "final_optimize_s": optimize_s, "rss_after_lay_mb": rss_laid,
            "lay_columns_s": columns_s, "peak_rss_lay_mb": _rss_mb("VmHWM")}  # fmt: skip


def _rebuild_once(path: Path, progress: bool) -> dict[str, float | str]:
    """One ``rebuild_preferences`` in a freshly opened store (as ``matcher rebuild-model`` runs: no copy of the
    log's columns in memory yet). ``path`` says what it read: ``columns`` when they were stored and current,
    else ``payloads`` (it then stores them)."""
    from engine import feedback_blocks
    from engine.learned.rebuild import rebuild_preferences

    _reset_peak()
    store, settings = _open(path, progress)
    try:
        columns = feedback_blocks.is_current(store, feedback_blocks.read_version(store))  # type: ignore[arg-type]
        rss_open = _rss_mb()
        t, cpu = time.perf_counter(), time.process_time()
        rep = rebuild_preferences(store, settings)  # type: ignore[arg-type]
        total, cpu = time.perf_counter() - t, time.process_time() - cpu
    finally:
        store.close()  # type: ignore[attr-defined]
    out: dict[str, float | str] = {
        "path": "columns" if columns else "payloads", "rss_opened_mb": rss_open, "rebuild_total_s": total,
        "rebuild_cpu_s": cpu, "peak_rss_rebuild_mb": _rss_mb("VmHWM"), "rebuild_users": rep.users,
        "rebuild_events": rep.events,
    }  # fmt: skip
    out.update({f"rebuild_{k}": v for k, v in rep.seconds.items()})
    out["read_events_per_s"] = rep.events / max(rep.seconds["read_s"], 1e-9)
    return out


def bench_store(args: argparse.Namespace) -> list[dict[str, float | str]]:
    """Lay the store (unless ``--store`` names one already laid), then time ``--rebuilds`` rebuilds on it, each in
    a freshly opened store: on a freshly laid store the first reads the payloads (and stores the log's columns,
    ``engine.feedback_blocks``), the next ones read the columns."""
    import tempfile

    from engine.schema import FEEDBACK

    out: dict[str, float | str] = {}
    rows: list[dict[str, float | str]] = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = args.store or Path(tmp) / "q"
        if not (path / ".laid").is_file() and not args.rebuild_only:
            out.update(build_store(args, path))
            (path / ".laid").write_text(json.dumps(out))
            if args.lay_only:
                return [out]
        store, _ = _open(path, False)
        try:
            out["store_events"] = store.count(FEEDBACK)  # type: ignore[attr-defined]
        finally:
            store.close()  # type: ignore[attr-defined]
        rows.append(out)
        for _ in range(args.rebuilds):
            rows.append(_rebuild_once(path, args.progress))
    return rows


def bench_columns(args: argparse.Namespace) -> dict[str, float | str]:
    """The log's columns alone at ``--columns-events`` rows among ``--store-users`` users (random point ids and
    decisions; no feedback collection laid): ``write_set`` into a fresh Edge store, then, in the store opened
    again, the read ``rebuild_preferences`` does when they are current (load every block, then the arrays the
    fit gets). What a rebuild's read costs at a log size the bench cannot lay as feedback points."""
    import tempfile

    from engine import feedback_blocks as fb
    from engine.schema import META

    n, m = args.store_users, args.columns_events
    rng = np.random.default_rng(args.seed)
    hi, lo = np.sort(rng.integers(0, 2**63, m, dtype=np.uint64)), rng.integers(0, 2**63, m, dtype=np.uint64)
    a = rng.integers(0, n, m).astype(np.int32)
    b = ((a + rng.integers(1, n, m)) % n).astype(np.int32)
    dec = np.where(rng.random(m) < 0.03, 2, rng.random(m) < 0.4).astype(np.int8)  # 3 % blocks
    rows = fb.LogRows([f"u{i}" for i in range(n)], hi, lo, a, b, dec, (a % 97).astype(np.float64))
    index = {f"u{i}": i for i in range(n)}
    out: dict[str, float | str] = {"columns_users": n, "columns_events": m}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = Path(tmp) / "q"
        store, _ = _open(path, False)
        try:
            store.setup("bench", args.dim)  # type: ignore[attr-defined]
            _reset_peak()
            t, cpu = time.perf_counter(), time.process_time()
            v = fb.write_set(store, rows)  # type: ignore[arg-type]
            out.update(write_s=time.perf_counter() - t, write_cpu_s=time.process_time() - cpu)
        finally:
            store.close()  # type: ignore[attr-defined]
        del rows
        meta = store._path(META)  # type: ignore[attr-defined]
        out["meta_mb_on_disk"] = sum(f.stat().st_blocks * 512 for f in meta.rglob("*") if f.is_file()) / 2**20
        out["peak_rss_write_mb"] = _rss_mb("VmHWM")
        _reset_peak()
        store, _ = _open(path, False)
        try:
            t, cpu = time.perf_counter(), time.process_time()
            got = fb.load(store, v)  # type: ignore[arg-type]
            load = time.perf_counter() - t
            assert got is not None and len(got) == m
            viewer, cand, like, ts = got.arrays(index)
            out.update(load_s=load, read_s=time.perf_counter() - t, read_cpu_s=time.process_time() - cpu,
                       arrays_events=int(viewer.size), peak_rss_read_mb=_rss_mb("VmHWM"))  # fmt: skip
        finally:
            store.close()  # type: ignore[attr-defined]
    return out


def bench_record(args: argparse.Namespace) -> dict[str, float | str]:
    """What keeping the log's columns adds to a feedback write: ``record_feedback`` (no model update) of
    ``--record-batches`` batches of ``--record-size`` fresh events, with the columns stored and current, then as
    many with none stored, alternating in rounds, on an Edge store of ``--store-users`` users whose log holds
    ``--store-events`` decisions (recorded first). Milliseconds per call, each the median of its rounds."""
    import statistics
    import tempfile

    from engine import feedback_blocks as fb
    from engine.feedback import Event, record_feedback

    n = args.store_users
    rng = np.random.default_rng(args.seed)
    ids = [f"u{i}" for i in range(n)]

    def events(k: int, t: float) -> list[Event]:
        a = rng.integers(0, n, k)
        b = (a + rng.integers(1, n, k)) % n
        return [
            Event(ids[x], ids[y], "like" if x % 3 else "pass", t) for x, y in zip(a.tolist(), b.tolist(), strict=True)
        ]

    per: dict[str, list[float]] = {"with": [], "without": []}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        store, _ = _open(Path(tmp) / "q", False)
        try:
            store.setup("bench", args.dim)  # type: ignore[attr-defined]
            for _ in range(0, args.store_events, 20_000):
                record_feedback(store, events(20_000, 0.0), require_known=False, update_model=False)  # type: ignore[arg-type]
            for r in range(3):
                for mode in ("with", "without"):
                    if mode == "with":
                        fb.write_set(store, fb.scan_log(store) or fb.rows_of([], [], [], [], []))  # type: ignore[arg-type]
                    else:
                        fb.drop(store)  # type: ignore[arg-type]
                    batches = [events(args.record_size, 1.0 + r) for _ in range(args.record_batches)]
                    t = time.perf_counter()
                    for b in batches:
                        record_feedback(store, b, require_known=False, update_model=False)  # type: ignore[arg-type]
                    per[mode].append((time.perf_counter() - t) / len(batches) * 1e3)
                    assert (fb.stored_rows(store) is not None) == (mode == "with")  # type: ignore[arg-type]
        finally:
            store.close()  # type: ignore[attr-defined]
    return {"record_log_events": args.store_events, "record_batch": args.record_size,
            "record_ms_with_columns": statistics.median(per["with"]),
            "record_ms_without_columns": statistics.median(per["without"]),
            "rounds_with": str([round(x, 2) for x in per["with"]]),
            "rounds_without": str([round(x, 2) for x in per["without"]])}  # fmt: skip


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
    ap.add_argument(
        "--lay-columns",
        action="store_true",
        help="also store the log's columns as record_feedback leaves them (the rebuild reads those)",
    )
    ap.add_argument("--rebuild-only", action="store_true", help="rebuild on the --store folder as it is (no laying)")
    ap.add_argument("--progress", action="store_true", help="show the rebuild's progress bars")
    ap.add_argument("--rebuilds", type=int, default=2, help="rebuilds of the laid store, each freshly opened")
    ap.add_argument("--columns-events", type=int, default=0, help="also time the log's columns alone at this size")
    ap.add_argument("--record-batches", type=int, default=0, help="also time record_feedback with/without columns")
    ap.add_argument("--record-size", type=int, default=20, help="events per record_feedback batch (--record-batches)")
    args = ap.parse_args()
    rows: list[dict[str, float | str]] = []
    if not args.skip_fit:
        rows.append(bench_fit(args))
    if not args.skip_store:
        rows.extend(bench_store(args))
    if args.columns_events:
        rows.append(bench_columns(args))
    if args.record_batches:
        rows.append(bench_record(args))
    for r in rows:
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    main()
