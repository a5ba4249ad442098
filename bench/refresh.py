"""Benchmark of the reciprocity refresh at scale: the full pass against the incremental one, on a real store.

For each population size n, on the embedded Edge store (the default backend), in one process:

1. write n synthetic users with 3 photos each (``bench/recommend.py``'s population: 512-d vectors around 64
   Zipf-sized clusters, ages 18-65 with ±5-year windows), ``optimize()``; with ``--store DIR`` this written
   store is kept in DIR and reused by later runs (copied, never modified);
2. the first full pass (``engine.reciprocity.full.refresh``: every user's statistics computed and written, and the
   refresh cache saved beside the store);
3. ``recommend()`` p50/p99 over ``--queries`` users (k=20, default settings) and the process RSS;
4. add 1 % more users (photos and user points, as ingestion writes them: journaled for the cache), copy the
   store folder, and refresh the same state both ways: the full pass on the copy (the reference time), the
   incremental pass (``refresh_changed``, what ingestion runs) on the original; ``incremental_kth_mismatches``
   counts users whose ``kth_sim`` differs between the two (0: exact); ``*_stages``: seconds per stage;
   ``*_cpu_s``: CPU seconds of the process (all its threads) beside each wall time, which on a shared
   machine depends less on what else runs (``incremental_over_full_cpu``: their ratio);
   ``--again``: 1 % more, and a second incremental pass from the cache the first one saved;
5. ``--deletes`` users removed with ``delete_user`` (each one's refresh included); ``delete_kth_mismatches``:
   users whose ``kth_sim`` a full pass changes right after the deletions (0: refreshed at once).

Peak RSS is the kernel's high-water mark (VmHWM), reset before each stage through ``/proc/self/clear_refs``.

``--users-only`` writes the users collection alone (no photos, no ``optimize()``, no ``recommend()``): what
the refresh passes read, at a fraction of the build time. ``--compute-only N`` skips the store: it builds N
users in memory and times ``compatible_topk`` (the full pass's numpy part) on whole (gender, seeking, age,
window) groups covering ``--sample`` of the users, and extrapolates by the exact multiply-add count of every
group (pool size x members x dim): the way to size a 1 M-user full pass without building a 1 M-user store.

    nice -n 10 python bench/refresh.py --users 100000 --users-only --deletes 0 --again --store /tmp/bench-stores
    nice -n 10 python bench/refresh.py --users 300000 --users-only --no-reference --deletes 0 --store /tmp/bench-stores
    nice -n 10 python bench/refresh.py --compute-only 1000000 --sample 0.03
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recommend import (  # noqa: E402 - bench/recommend.py is a script beside this one, not a package
    ENCODER_ID,
    PHOTOS_PER_USER,
    Population,
    make_population,
    photo_points,
)

from engine.reciprocity.blocks import stored  # noqa: E402
from engine.reciprocity.full import refresh  # noqa: E402
from engine.reciprocity.incremental import refresh_changed  # noqa: E402
from engine.reciprocity.topk import Groups, compatible_topk  # noqa: E402
from engine.recommend import recommend  # noqa: E402
from engine.schema import KTH_SIM, PHOTOS, STAT_FIELDS, USERS, photo_point_id, user_point_id  # noqa: E402
from engine.settings import Settings  # noqa: E402
from engine.store import Store, open_store  # noqa: E402
from engine.store.base import Point  # noqa: E402
from engine.users import delete_user  # noqa: E402

log = logging.getLogger("bench.refresh")
CHUNK = 2048


def _status(key: str) -> float:
    """A ``/proc/self/status`` figure (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def _write_users(store: Store, pop: Population, start: int, stop: int, batch: int, photos_too: bool = True) -> None:
    """Photos and user points of users ``start:stop``, as ingestion writes them (no statistics yet)."""
    for lo in range(start, stop, CHUNK):
        hi = min(lo + CHUNK, stop)
        points = photo_points(pop, lo, hi) if photos_too else []
        for b in range(0, len(points), batch):
            store.upsert(PHOTOS, points[b : b + batch])
        users = []
        for i in range(lo, hi):
            p = pop.profiles[i]
            payload: dict[str, Any] = {
                "user_id": p.user_id, "gender": p.gender, "age": p.age, "seeking": list(p.seeking),
                "age_min": p.age_min, "age_max": p.age_max, "n_photos": PHOTOS_PER_USER,
                "photo_ids": [photo_point_id(p.user_id, f"{i}-{j}") for j in range(PHOTOS_PER_USER)],
                "encoder_id": ENCODER_ID,
            }  # fmt: skip
            users.append(Point(id=user_point_id(p.user_id), vector=pop.vectors[i], payload=payload))
        for b in range(0, len(users), batch):
            store.upsert(USERS, users[b : b + batch])


def _stats_of(store: Store) -> dict[str, dict[str, Any]]:
    """Every user's reciprocity statistics as stored: in the blocks (``engine.reciprocity.blocks``), or in
    the payloads of a store written before them."""
    blocks = stored(store)
    if blocks is not None:
        return {p.id: blocks.payload_of(p.id) for p in store.scroll(USERS)}
    return {p.id: {f: p.payload.get(f) for f in STAT_FIELDS} for p in store.scroll(USERS)}


def _mismatches(want: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]]) -> int:
    """Users whose kth_sim differs (beyond float noise) between two snapshots, or who are in only one."""
    bad = len(set(want) ^ set(got))
    for pid in set(want) & set(got):
        a, b = want[pid].get(KTH_SIM), got[pid].get(KTH_SIM)
        bad += a is None or b is None or abs(a - b) > 1e-6
    return bad


def _disk_mb(path: Path) -> float:
    used = sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())
    return round(used / 2**20, 1)


def _timed(row: dict[str, Any], name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    row[f"{name}_s"] = round(time.perf_counter() - t0, 2)
    row[f"{name}_cpu_s"] = round(time.process_time() - c0, 2)  # every thread of the process: robust to load
    row[f"{name}_peak_rss_mb"] = round(_status("VmHWM"))
    log.warning("%s: %s s", name, row[f"{name}_s"])
    return out


def _settings(path: Path) -> Settings:
    return Settings(store_path=path, store_backend="edge", progress=False)  # type: ignore[call-arg]


def _base_store(n: int, pop: Population, args: argparse.Namespace, workdir: Path, row: dict[str, Any]) -> Path:
    """The folder of a store holding users ``0:n`` as written (no statistics yet): built once under
    ``--store`` (and reused by later runs: writing 100,000 users is minutes here), else in ``workdir``."""
    kind = "users-only" if args.users_only else "full"
    base = (args.store or workdir) / f"edge-{kind}-{n}-d{args.dim}-s{args.seed}"
    if (base / "bench-built.json").exists():
        row["base_reused"] = str(base)
        return base
    shutil.rmtree(base, ignore_errors=True)
    settings = _settings(base)
    with open_store(settings) as store:
        store.setup(ENCODER_ID, args.dim, rebuild=True)
        _timed(row, "write", _write_users, store, pop, 0, n, settings.ingest.write_batch_size, not args.users_only)
        if not args.users_only:
            _timed(row, "optimize", store.optimize)
    (base / "bench-built.json").write_text(json.dumps({"users": n, "dim": args.dim, "seed": args.seed}))
    return base


def _copy(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".matcher.lock", "bench-built.json"))


def run_store(n: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    added = max(1, int(round(n * args.add_fraction)))
    t0 = time.perf_counter()
    pop = make_population(n + added, args.dim, args.seed)
    row: dict[str, Any] = {"users": n, "added": added, "dim": args.dim}
    row["generate_s"] = round(time.perf_counter() - t0, 2)
    base = _base_store(n, pop, args, workdir, row)
    path, twin = workdir / f"edge-{n}", workdir / f"edge-{n}-twin"
    _copy(base, path)
    settings = _settings(path)
    batch = settings.ingest.write_batch_size
    full_store = not args.users_only
    with open_store(settings) as store:
        # The first full pass computes and writes every user's statistics (and leaves the refresh cache).
        rep = _timed(row, "full_first", refresh, store, settings)
        row["full_first_rewritten"] = rep.rewritten
        rng = np.random.default_rng(args.seed + 1)
        if full_store:
            askers = rng.choice(n, size=min(args.queries, n), replace=False)
            for i in askers[:5]:  # warm-up: page in the segments
                recommend(pop.ids[i], 20, store=store, settings=settings)
            lat = []
            for i in askers:
                t = time.perf_counter()
                recommend(pop.ids[i], 20, store=store, settings=settings)
                lat.append((time.perf_counter() - t) * 1000)
            row["recommend_p50_ms"] = round(float(np.percentile(lat, 50)), 2)
            row["recommend_p99_ms"] = round(float(np.percentile(lat, 99)), 2)
            row["queries"] = len(lat)
            row["serving_rss_mb"] = round(_status("VmRSS"))
        _timed(row, "write_added", _write_users, store, pop, n, n + added, batch, full_store)
    row["store_disk_mb"] = _disk_mb(path)
    # The same state twice (a copy of the folder): the full pass on one, the incremental pass on the other.
    _copy(path, twin)
    if args.reference:
        with open_store(_settings(twin)) as store:
            rep = _timed(row, "full", refresh, store, settings)
            row["full_rewritten"] = rep.rewritten
            row["full_stages"] = rep.stages
            exact = _stats_of(store)
        shutil.rmtree(twin, ignore_errors=True)
    with open_store(settings) as store:
        rep = _timed(row, "incremental", refresh_changed, store, settings, arrived=pop.ids[n : n + added])
        row.update(incremental_recomputed=rep.recomputed, incremental_merged=rep.merged)
        row["incremental_rewritten"] = rep.rewritten
        row["incremental_cache"] = rep.cache
        row["incremental_stages"] = rep.stages
        if args.reference:
            row["incremental_kth_mismatches"] = _mismatches(exact, _stats_of(store))  # 0: the same kth_sim
            row["incremental_over_full"] = round(row["incremental_s"] / row["full_s"], 4)
            row["incremental_over_full_cpu"] = round(row["incremental_cpu_s"] / row["full_cpu_s"], 4)
        else:  # against the first full pass (which wrote every user: a little slower than one after 1 %)
            row["incremental_over_full_first"] = round(row["incremental_s"] / row["full_first_s"], 4)
        if args.again:
            # A second round on the state the incremental pass left: 1 % more, refreshed incrementally.
            more = max(1, int(round(n * args.add_fraction)))
            pop2 = make_population(n + added + more, args.dim, args.seed)
            _write_users(store, pop2, n + added, n + added + more, batch, full_store)
            rep = _timed(row, "incremental2", refresh_changed, store, settings, arrived=pop2.ids[n + added :])
            row["incremental2_cache"] = rep.cache
            row["incremental2_stages"] = rep.stages
        victims = rng.choice(n, size=args.deletes, replace=False)
        del_s = []
        for i in victims:
            t = time.perf_counter()
            delete_user(store, pop.ids[int(i)], settings=settings)
            del_s.append(time.perf_counter() - t)
        if del_s:
            row["delete_user_p50_s"] = round(float(np.percentile(del_s, 50)), 2)
            row["delete_user_max_s"] = round(max(del_s), 2)
        if del_s and args.reference:
            after_deletes = _stats_of(store)
            refresh(store, settings)
            row["delete_kth_mismatches"] = _mismatches(_stats_of(store), after_deletes)  # 0: refreshed at once
    shutil.rmtree(path, ignore_errors=True)
    return row


def run_compute_only(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Time compatible_topk on whole groups covering ``args.sample`` of n users; extrapolate by work."""
    t0 = time.perf_counter()
    pop = make_population(n, args.dim, args.seed)
    row: dict[str, Any] = {"users": n, "dim": args.dim, "generate_s": round(time.perf_counter() - t0, 2)}
    row["matrix_mb"] = round(pop.vectors.nbytes / 2**20)
    grp = Groups.of(pop.profiles)
    keys = np.stack([grp.gender, grp.seeks, grp.age, grp.lo, grp.hi], axis=1)
    uniq, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    pool = np.array([len(grp.pool(*(int(x) for x in u))) for u in uniq])
    work = counts * pool  # similarity entries per group (each one dim multiply-adds)
    rng = np.random.default_rng(args.seed + 2)
    chosen = rng.permutation(len(uniq))
    take = chosen[: max(1, int(np.searchsorted(np.cumsum(counts[chosen]), args.sample * n)))]
    rows = np.flatnonzero(np.isin(inverse.ravel(), take))
    row.update(
        groups=len(uniq),
        mean_pool=round(float(np.sum(work) / n)),
        sampled_users=len(rows),
        sampled_work_share=round(float(work[take].sum() / work.sum()), 4),
    )
    _reset_peak()
    t0 = time.perf_counter()
    compatible_topk(pop.vectors, pop.profiles, 50, rows=rows)
    sample_s = time.perf_counter() - t0
    row["sample_s"] = round(sample_s, 2)
    row["peak_rss_mb"] = round(_status("VmHWM"))
    row["gflop_per_s"] = round(2 * float(work[take].sum()) * args.dim / sample_s / 1e9, 1)
    row["full_compute_projected_s"] = round(sample_s / row["sampled_work_share"])
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--users", type=int, action="append", help="population size on a real store (repeatable)")
    ap.add_argument("--compute-only", type=int, action="append", default=[], help="population size, numpy only")
    ap.add_argument("--sample", type=float, default=0.04, help="share of users timed with --compute-only")
    ap.add_argument("--add-fraction", type=float, default=0.01, help="users added before the incremental pass")
    ap.add_argument("--deletes", type=int, default=5, help="users deleted with delete_user after it")
    ap.add_argument("--queries", type=int, default=200, help="recommend() calls timed")
    ap.add_argument(
        "--users-only",
        action="store_true",
        help="users collection only: no photos, no optimize(), no recommend() timing (refresh reads only users)",
    )
    ap.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the full pass on the state after adding users (and the exactness check); compare with the first",
    )
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument(
        "--store", type=Path, default=None, help="folder keeping the written base stores between runs (reused)"
    )
    ap.add_argument("--again", action="store_true", help="then add 1 %% more and time a second incremental pass")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-refresh-"))
    common = {
        "cpus": len(os.sched_getaffinity(0)),
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_at_start": round(os.getloadavg()[0], 2),
    }
    rows = []
    for n in args.users or []:
        rows.append({"mode": "store", **run_store(n, args, workdir), **common})
        print(json.dumps(rows[-1]), flush=True)
    for n in args.compute_only:
        rows.append({"mode": "compute-only", **run_compute_only(n, args), **common})
        print(json.dumps(rows[-1]), flush=True)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
