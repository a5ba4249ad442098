"""Benchmark of ``recommend()`` on synthetic users, every store backend side by side in one run.

For each population size and backend: ingestion write throughput (points/s upserting photos, then users),
the time ``optimize()`` takes, p50/p99 latency of ``recommend()`` (k=20, default settings), p50 of the
candidate stage alone, and recall@20 of the candidate stage against an exact brute-force numpy computation
of the same filtered query (timed too: ``exact_p50_ms``), all in the same run on the same data. A second
exact baseline is Qdrant's own: the same filtered query on the same store with ``exact=True`` search params
(``qdrant_exact_p50_ms``, and its recall@20 against numpy); ``p50_over_exact`` and ``p50_over_qdrant_exact``
are recommend()'s p50 over each. ``repeat_p50_ms``: the same askers asking again right after (what the
per-process copies keyed on the asker, ``engine.ranking.feedback_cache``, serve; the first pass is each asker's
first call in the process). Before the timed calls the bench runs ``engine.ranking.warm`` as a serving process
would after opening the store (``warm_s``; ``--no-warm`` skips it, and the copies then fill call by call), then
five warm-up calls (``first_call_in_process_ms``: the first of them). The repeat pass times Qdrant's exact query
again beside each call (``repeat_qdrant_exact_p50_ms``), and ``repeat_p50_over_qdrant_exact`` is over that
(before 2026-12-07 evening it was over the first pass's, as ``repeat_p50_over_first_qdrant_exact`` still is).
``qdrant_exact_hits_p50_ms``: the same exact query through ``Store.query_hits`` (ids and scores only, what the
learned stage 1 reads since 2026-12-07 late night), timed right after the first exact query, and
``p50_over_qdrant_exact_hits`` recommend()'s p50 over it (None for an engine without ``query_hits``).

Data: vectors generated directly (no encoder), dim 512: users drawn around 64 cluster centres (so there
are dense regions and hubs), 3 photos per user around the user, the user vector the normalised mean of
their photos (as ingestion writes it). Genders 47/47/6 % female/male/nonbinary, ages 18-65, each user's
age window ±5 years, seeking the other binary gender (10 % of binary users seek both; nonbinary users
seek everyone).

``kth_sim`` (engine.reciprocity) is computed once with exact numpy (``engine.reciprocity.topk.compatible_kth``,
what ``refresh`` runs) and written into the users' payloads at upsert time on every backend, so all
backends serve the same data; with ``--refresh`` the real ``engine.reciprocity.full.refresh`` pass (scroll of
the users with vectors, the numpy pass, rewrite of changed points) is also timed on each backend.
``store_disk_mb`` is the embedded store's folder size after ``optimize()``.

    OMP_NUM_THREADS=1 python bench/recommend.py --users 1000 --users 10000 --json
    python bench/recommend.py --users 100000 --backend edge --queries 500

qdrant-client local mode is exact search in pure Python (recommend() p50 ~3 s at 10,000 users): it runs only up
to ``--local-max-users`` (default 10,000) and with ``--local-queries`` queries; above that it is skipped
with the reason. Local mode runs in memory unless ``--local-disk`` (its on-disk writes go point by point to SQLite, ~45
points/s here). The server backend runs when ``MATCHER_QDRANT_URL`` points at a reachable Qdrant (otherwise
its row says it was skipped and why).
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
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.compatibility import Profile, compatible_filter
from engine.errors import StoreUnavailable
from engine.learned.served import served_model
from engine.ranking.exposure import ExposureLedger
from engine.reciprocity.full import refresh
from engine.reciprocity.topk import compatible_kth
from engine.recommend import recommend
from engine.schema import KTH_K, KTH_SIM, PHOTOS, USERS, photo_point_id, user_point_id
from engine.settings import Settings
from engine.store import Store, open_store
from engine.store.base import Point, Query

log = logging.getLogger("bench.recommend")

GENDERS = ("female", "male", "nonbinary")
PHOTOS_PER_USER = 3
CHUNK = 2048  # users per generated chunk (photos are regenerated per backend, never all held in memory)
ENCODER_ID = "bench-synthetic"


@dataclass
class Population:
    """Users' vectors and profiles (photos are regenerated from ``seed`` chunk by chunk)."""

    ids: list[str]
    vectors: np.ndarray  # (n, d) float32 unit
    profiles: list[Profile]
    seed: int
    dim: int
    centers: np.ndarray  # (64, d)
    cluster: np.ndarray  # (n,)
    kth: np.ndarray | None = None


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _photos_chunk(pop: Population, start: int, stop: int) -> np.ndarray:
    """Photos of users ``start:stop``, (stop - start, PHOTOS_PER_USER, d), deterministic per chunk."""
    rng = np.random.default_rng([pop.seed, start])
    n, d = stop - start, pop.dim
    spread = rng.standard_normal((n, d)).astype(np.float32) * (0.9 / d**0.5)
    base = _unit(pop.centers[pop.cluster[start:stop]] + spread)
    noise = rng.standard_normal((n, PHOTOS_PER_USER, d)).astype(np.float32) * (0.35 / d**0.5)
    return _unit(base[:, None, :] + noise)


def photo_points(pop: Population, start: int, stop: int) -> list[Point]:
    """The photo points of users ``start:stop``, with the payload keys the filters use."""
    photos = _photos_chunk(pop, start, stop)
    return [
        Point(
            id=photo_point_id(pop.ids[i], f"{i}-{j}"),
            vector=photos[i - start, j],
            payload={"user_id": pop.ids[i], "gender": pop.profiles[i].gender, "age": pop.profiles[i].age},
        )
        for i in range(start, stop)
        for j in range(PHOTOS_PER_USER)
    ]


def make_population(n: int, dim: int, seed: int) -> Population:
    rng = np.random.default_rng(seed)
    centers = _unit(rng.standard_normal((64, dim)).astype(np.float32))
    # Zipf-like cluster sizes: a few dense regions make hubs.
    weights = 1.0 / np.arange(1, 65)
    cluster = rng.choice(64, size=n, p=weights / weights.sum())
    genders = rng.choice(3, size=n, p=[0.47, 0.47, 0.06])
    ages = rng.integers(18, 66, size=n)
    both = rng.random(n) < 0.10
    ids = [f"user_{i:06d}" for i in range(n)]
    profiles = []
    for i in range(n):
        g = GENDERS[genders[i]]
        if g == "nonbinary":
            seeking: tuple[str, ...] = GENDERS
        elif both[i]:
            seeking = ("female", "male")
        else:
            seeking = ("male",) if g == "female" else ("female",)
        a = int(ages[i])
        profiles.append(Profile(ids[i], g, a, seeking, max(18, a - 5), a + 5))
    pop = Population(ids, np.zeros((n, dim), np.float32), profiles, seed, dim, centers, cluster)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        pop.vectors[start:stop] = _unit(_photos_chunk(pop, start, stop).mean(axis=1))
    return pop


class Exact:
    """Brute-force filtered queries in numpy over the whole population (the recall reference)."""

    def __init__(self, pop: Population) -> None:
        self.v = pop.vectors
        gidx = {g: i for i, g in enumerate(GENDERS)}
        self.gender = np.array([gidx[p.gender] for p in pop.profiles])
        self.seeks = np.zeros((len(pop.profiles), len(GENDERS)), dtype=bool)
        for i, p in enumerate(pop.profiles):
            self.seeks[i, [gidx[s] for s in p.seeking]] = True
        self.age = np.array([p.age for p in pop.profiles])
        self.lo = np.array([p.age_min for p in pop.profiles])
        self.hi = np.array([p.age_max for p in pop.profiles])

    def top(self, i: int, limit: int, query: np.ndarray | None = None) -> np.ndarray:
        """Indices of ``i``'s ``limit`` most similar compatible users (to ``query``, default ``i``'s own
        vector), best first."""
        ok = (
            self.seeks[i, self.gender]
            & self.seeks[:, self.gender[i]]
            & (self.age >= self.lo[i])
            & (self.age <= self.hi[i])
            & (self.lo <= self.age[i])
            & (self.hi >= self.age[i])
        )
        ok[i] = False
        idx = np.flatnonzero(ok)
        sims = self.v[idx] @ (self.v[i] if query is None else query)
        if len(idx) > limit:
            part = np.argpartition(-sims, limit - 1)[:limit]
            idx, sims = idx[part], sims[part]
        return idx[np.argsort(-sims, kind="stable")]


def _settings(backend: str, path: Path, users: int, oversample: int | None = None) -> Settings:
    s = Settings(store_path=path, store_backend=backend, progress=False)  # type: ignore[call-arg,arg-type]
    if backend == "server":
        # Own collections on a shared server: never touch the product's.
        s = s.model_copy(update={"collection_prefix": f"matcher_bench_{users}_"})
    if oversample is not None:
        s = s.model_copy(update={"recommend": s.recommend.model_copy(update={"oversample": oversample})})
    return s


def _write(store: Store, pop: Population, batch: int) -> tuple[float, float]:
    """Upsert every photo, then every user (with kth_sim); returns points/s for photos and for users."""
    t_photos = 0.0
    n = len(pop.ids)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        points = photo_points(pop, start, stop)
        t0 = time.perf_counter()
        for b in range(0, len(points), batch):
            store.upsert(PHOTOS, points[b : b + batch])
        t_photos += time.perf_counter() - t0
    users = []
    for i, p in enumerate(pop.profiles):
        payload: dict[str, Any] = {
            "user_id": p.user_id,
            "gender": p.gender,
            "age": p.age,
            "seeking": list(p.seeking),
            "age_min": p.age_min,
            "age_max": p.age_max,
            "n_photos": PHOTOS_PER_USER,
            "photo_ids": [photo_point_id(p.user_id, f"{i}-{j}") for j in range(PHOTOS_PER_USER)],
            "encoder_id": ENCODER_ID,
        }
        if pop.kth is not None:
            payload[KTH_SIM] = float(pop.kth[i])
            payload[KTH_K] = 50
        users.append(Point(id=user_point_id(p.user_id), vector=pop.vectors[i], payload=payload))
    t0 = time.perf_counter()
    for b in range(0, len(users), batch):
        store.upsert(USERS, users[b : b + batch])
    t_users = time.perf_counter() - t0
    return n * PHOTOS_PER_USER / t_photos, n / t_users


def _write_model(store: Store, pop: Population, settings: Settings, args: argparse.Namespace) -> tuple[float, float]:
    """A learned model fitted on a synthetic log (``--decisions`` per user: random compatible-or-not pairs,
    like odds from a hidden appeal per user) and written into the store, as ``matcher rebuild-model``
    would; the log is stored in the ``feedback`` collection too (so each call reads the asker's decisions as
    in production). Returns (fit seconds, write seconds)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as `python bench/recommend.py`
    from rebuild import lay_feedback

    from engine.learned.fit import fit_preference
    from engine.learned.rebuild import write_model

    n = len(pop.ids)
    rng = np.random.default_rng(args.seed + 7)
    m = n * args.decisions
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    b = np.where(a == b, (b + 1) % n, b)
    _, first = np.unique(a * n + b, return_index=True)  # one decision per pair, as the collection keeps it
    a, b = a[first], b[first]
    appeal = rng.normal(size=n)
    like = rng.random(a.size) < 1 / (1 + np.exp(-(appeal[b] - 0.3)))
    lay_feedback(store, pop.ids, a, b, like, 20_000)
    t0 = time.perf_counter()
    model = fit_preference(pop.ids, pop.vectors, a, b, like)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_model(store, model, [user_point_id(u) for u in pop.ids], settings=settings)
    return round(fit_s, 2), round(time.perf_counter() - t0, 2)


def _local_in_memory() -> Store:
    """qdrant-client local mode in memory. The product's local store (``open_store``) persists to a folder,
    where each upsert is written point by point to SQLite (~45 points/s measured here): far too slow to
    load 10,000 users in a benchmark, and irrelevant to query latency, which is the same engine."""
    from qdrant_client import QdrantClient

    from engine.store.client import QdrantClientStore

    return QdrantClientStore(QdrantClient(location=":memory:"), backend="local", where="local mode in memory")


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def run_backend(backend: str, pop: Population, exact: Exact, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    n = len(pop.ids)
    row: dict[str, Any] = {"backend": backend, "users": n, "dim": pop.dim, "photos": n * PHOTOS_PER_USER}
    queries = args.queries
    if backend == "server" and not os.environ.get("MATCHER_QDRANT_URL"):
        row["skipped"] = (
            "MATCHER_QDRANT_URL is not set: no Qdrant server to run against (start one, e.g. with "
            "docker/compose.yaml, where a Docker engine exists)"
        )
        return row
    if backend == "local":
        if n > args.local_max_users:
            row["skipped"] = (
                "qdrant-client local mode is exact brute-force search in Python (recommend() p50 ~3 s at "
                "10,000 users here, stage 1 alone ~0.5 s; it grows linearly): not run above "
                f"--local-max-users={args.local_max_users}"
            )
            return row
        queries = min(queries, args.local_queries)
    path = workdir / f"{backend}-{n}"
    settings = _settings(backend, path, n, args.oversample)
    try:
        if backend == "local" and not args.local_disk:
            store = _local_in_memory()
            row["local_storage"] = "memory"
        else:
            store = open_store(settings)
            if backend == "local":
                row["local_storage"] = "disk"
    except StoreUnavailable as exc:
        row["skipped"] = f"store unavailable: {exc}"
        return row
    try:
        store.setup(ENCODER_ID, pop.dim, rebuild=True)
        photo_pps, user_pps = _write(store, pop, settings.ingest.write_batch_size)
        row["upsert_photos_pts_per_s"] = round(photo_pps)
        row["upsert_users_pts_per_s"] = round(user_pps)
        t0 = time.perf_counter()
        store.optimize()
        row["optimize_s"] = round(time.perf_counter() - t0, 2)
        row["refresh_s"] = None
        if args.refresh:
            rep = refresh(store, settings)
            row["refresh_s"] = round(rep.seconds, 2)
            # Points whose ANN-measured statistic differs from the exact one written at upsert.
            row["refresh_rewritten"] = rep.rewritten
            t0 = time.perf_counter()
            store.optimize()  # refresh rewrote the users points
            row["optimize_after_refresh_s"] = round(time.perf_counter() - t0, 2)

        row["model"] = "photo"
        if args.model:
            row["model"] = "learned"
            row["model_fit_s"], row["model_write_s"] = _write_model(store, pop, settings, args)
        rng = np.random.default_rng(args.seed + 1)
        askers = rng.choice(n, size=min(queries, n), replace=False)
        k, limit = args.k, args.k * settings.recommend.oversample
        if args.model:
            limit = max(limit, settings.recommend.learned_pool)
        # As `matcher serve` calls it: with an exposure ledger, stage 1 on the learned path also runs the fresh
        # leg (cold-start users) in the same batch as the taste query.
        ledger = ExposureLedger() if args.ledger else None
        row["ledger"] = args.ledger
        row["warm_s"] = row["warm_users"] = row["warm_events"] = row["warm_photos"] = None
        try:  # what a serving process does once after opening the store (older engines have none)
            from engine.ranking.warm import warm
        except ImportError:
            warm = None  # type: ignore[assignment]
        if not args.no_warm and warm is not None:
            warmed = warm(store, settings)
            row.update(warm_s=warmed.seconds, warm_users=warmed.users, warm_events=warmed.events)
            row["warm_photos"] = warmed.photos
        for j, i in enumerate(askers[: min(5, len(askers))]):  # warm-up: page in the segments
            t0 = time.perf_counter()
            recommend(pop.ids[i], k, store=store, settings=settings, exposure=ledger)
            if j == 0:  # the process's first call (fills what warm did not)
                row["first_call_in_process_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        lat, cand_lat, exact_lat, rec20, rec20_cand = [], [], [], [], []
        qexact_lat: list[float] = []
        qexact_hits_lat: list[float] = []
        rec20_qexact: list[float] = []
        depth: list[int] = []
        repeat_queries: list[Query] = []
        for i in askers:
            t0 = time.perf_counter()
            matches = recommend(pop.ids[i], k, store=store, settings=settings, exposure=ledger)
            lat.append((time.perf_counter() - t0) * 1000)
            flt = compatible_filter(pop.profiles[i])
            qvec = pop.vectors[i]
            if args.model:  # stage 1 of the learned engine queries with the stored learned taste
                sm = served_model(store)
                taste = sm.query_taste(sm.index.get(user_point_id(pop.ids[i]), -1)) if sm is not None else None
                qvec = _unit(taste) if taste is not None and np.any(taste) else qvec
            q = Query(vector=qvec, limit=limit, filter=flt, with_payload=False)
            repeat_queries.append(replace(q, exact=True))
            t0 = time.perf_counter()
            ann = store.query(USERS, q)
            cand_lat.append((time.perf_counter() - t0) * 1000)
            # Qdrant's own exact filtered query (no HNSW: every compatible point scored), same store and filter.
            t0 = time.perf_counter()
            qex = store.query(USERS, replace(q, exact=True))
            qexact_lat.append((time.perf_counter() - t0) * 1000)
            if hasattr(store, "query_hits"):  # the same exact query answering ids and scores only
                t0 = time.perf_counter()
                store.query_hits(USERS, [replace(q, exact=True)])
                qexact_hits_lat.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            ex = exact.top(int(i), limit, qvec)
            exact_lat.append((time.perf_counter() - t0) * 1000)
            truth = {user_point_id(pop.ids[j]) for j in ex[:20]}
            if truth:
                ann_ids = [r.id for r in ann]
                rec20.append(len(truth & set(ann_ids[:20])) / len(truth))
                rec20_qexact.append(len(truth & {r.id for r in qex[:20]}) / len(truth))
                rec20_cand.append(len(truth & set(ann_ids)) / len(truth))
            # How deep into the stage-1 list the rerank reached for its top k (what oversample buys).
            stage1_pos = {r.id: pos for pos, r in enumerate(ann, start=1)}
            depth.extend(stage1_pos.get(user_point_id(m.user_id), limit + 1) for m in matches)
        # The same askers again (a user coming back: what per-process copies keyed on the asker serve).
        again, qexact_again = [], []
        for i, q in zip(askers, repeat_queries, strict=True):
            t0 = time.perf_counter()
            recommend(pop.ids[i], k, store=store, settings=settings, exposure=ledger)
            again.append((time.perf_counter() - t0) * 1000)
            # The same baseline again, beside each repeat call (the load may have moved since the first pass).
            t0 = time.perf_counter()
            store.query(USERS, q)
            qexact_again.append((time.perf_counter() - t0) * 1000)
        p50, ex50, qex50 = _pct(lat, 50), _pct(exact_lat, 50), _pct(qexact_lat, 50)
        row.update(
            queries=len(askers),
            k=k,
            candidates=limit,
            p50_ms=round(p50, 2),
            p99_ms=round(_pct(lat, 99), 2),
            candidate_p50_ms=round(_pct(cand_lat, 50), 2),
            recall_at_20=round(float(np.mean(rec20)), 4) if rec20 else None,
            recall_at_20_in_candidates=round(float(np.mean(rec20_cand)), 4) if rec20_cand else None,
            exact_p50_ms=round(ex50, 2),
            qdrant_exact_p50_ms=round(qex50, 2),
            qdrant_exact_recall_at_20=round(float(np.mean(rec20_qexact)), 4) if rec20_qexact else None,
            p50_over_exact=round(p50 / ex50, 2),
            p50_over_qdrant_exact=round(p50 / qex50, 2),
            # The baseline through Store.query_hits (ids and scores, no ScoredPoint per point; engines since
            # 2026-12-07 late night), as the learned stage 1 reads its candidates; None where the engine has none.
            qdrant_exact_hits_p50_ms=round(_pct(qexact_hits_lat, 50), 2) if qexact_hits_lat else None,
            p50_over_qdrant_exact_hits=round(p50 / _pct(qexact_hits_lat, 50), 2) if qexact_hits_lat else None,
            repeat_p50_ms=round(_pct(again, 50), 2),
            repeat_p50_over_exact=round(_pct(again, 50) / ex50, 2),
            repeat_qdrant_exact_p50_ms=round(_pct(qexact_again, 50), 2),
            # Over the baseline timed beside the repeat calls (the first pass's baseline: *_over_first_qdrant_exact).
            repeat_p50_over_qdrant_exact=round(_pct(again, 50) / _pct(qexact_again, 50), 2),
            repeat_p50_over_first_qdrant_exact=round(_pct(again, 50) / qex50, 2),
            # Stage-1 positions of the returned matches: p99, and the share from the lower half of the list.
            match_stage1_pos_p99=round(_pct([float(d) for d in depth], 99), 1),
            match_from_lower_half=round(float(np.mean(np.asarray(depth) > limit // 2)), 4) if depth else None,
        )
    finally:
        store.close()
        if backend != "server":
            if path.is_dir():  # blocks the embedded store uses on disk (as du counts: WAL files are sparse)
                used = sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())
                row["store_disk_mb"] = round(used / 2**20, 1)
            if not args.keep:
                shutil.rmtree(path, ignore_errors=True)
    return row


def backends(requested: list[str] | None) -> Iterator[str]:
    if requested:
        yield from requested
        return
    yield from ("edge", "local", "server")  # server: a row saying why it was skipped when no URL is set


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--users", type=int, action="append", help="population size (repeatable; default 1000)")
    ap.add_argument("--backend", action="append", choices=["edge", "local", "server"], help="repeatable")
    ap.add_argument("--queries", type=int, default=200, help="recommend() calls timed per backend")
    ap.add_argument("--local-queries", type=int, default=20)
    ap.add_argument("--local-max-users", type=int, default=10_000)
    ap.add_argument(
        "--local-disk", action="store_true", help="local mode on disk as the product opens it (slow writes)"
    )
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--model", action="store_true", help="serve a learned preference model (engine.learned.rebuild)")
    ap.add_argument("--decisions", type=int, default=30, help="--model: logged decisions per user")
    ap.add_argument("--oversample", type=int, default=None, help="override recommend.oversample")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--refresh", action="store_true", help="also time engine.reciprocity.full.refresh per backend")
    ap.add_argument("--workdir", type=Path, default=None, help="embedded stores go here (default: temp)")
    ap.add_argument(
        "--keep", action="store_true", help="keep the embedded stores in --workdir (for bench/learned_serving.py)"
    )
    ap.add_argument(
        "--ledger", action="store_true", help="pass an ExposureLedger to recommend() (as matcher serve does)"
    )
    ap.add_argument(
        "--no-warm", action="store_true", help="skip engine.ranking.warm (the copies then fill call by call)"
    )
    ap.add_argument("--json", action="store_true", help="one JSON object per line and backend")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-recommend-"))
    rows = []
    for n in args.users or [1000]:
        t0 = time.perf_counter()
        pop = make_population(n, args.dim, args.seed)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pop.kth = compatible_kth(pop.vectors, pop.profiles, Settings().recommend.reciprocity_k)  # type: ignore[call-arg]
        kth_s = time.perf_counter() - t0
        exact = Exact(pop)
        for backend in backends(args.backend):
            row = run_backend(backend, pop, exact, args, workdir)
            row.update(
                cpus=cpus,
                omp_threads=os.environ.get("OMP_NUM_THREADS"),
                generate_s=round(gen_s, 2),
                kth_s=round(kth_s, 2),
                kth_source="exact numpy (engine.reciprocity.topk.compatible_kth, what refresh runs), written at upsert",
            )
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.workdir and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    if not args.json:
        cols = [
            "backend",
            "users",
            "p50_ms",
            "p99_ms",
            "candidate_p50_ms",
            "recall_at_20",
            "exact_p50_ms",
            "qdrant_exact_p50_ms",
            "p50_over_exact",
            "p50_over_qdrant_exact",
            "repeat_p50_ms",
            "upsert_photos_pts_per_s",
            "upsert_users_pts_per_s",
            "optimize_s",
            "refresh_s",
        ]
        print(" | ".join(cols))
        for r in rows:
            print(" | ".join(str(r.get(c, r.get("skipped", "") if c == "p50_ms" else "")) for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
