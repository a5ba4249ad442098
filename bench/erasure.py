"""Benchmark of ``delete_user`` on the Edge store: the logical delete and the rewrite that erases the bytes.

Synthetic users (no encoder): unit vectors, 3 photos per user, the user vector the normalised mean of its
photos, payloads as ingestion writes them (the fields that matter for size). The store is optimized first
(HNSW on users), then one user is deleted with ``engine.users.delete_user``; the time of the rewrite
(``EdgeStore.finish_erasure``: every collection copied into a fresh shard, users' HNSW rebuilt) is timed
apart from the whole call.

    OMP_NUM_THREADS=2 python bench/erasure.py --users 1000 --users 10000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.schema import PHOTOS, USERS, photo_point_id, user_point_id
from engine.settings import Settings
from engine.store.base import Point
from engine.store.edge import EdgeStore
from engine.users import delete_user


def _build(path: Path, n: int, dim: int, seed: int) -> Settings:
    rng = np.random.default_rng(seed)
    settings = Settings(store_path=path, progress=False)  # type: ignore[call-arg]
    store = EdgeStore.open(settings)
    store.setup("bench", dim)
    for start in range(0, n, 2000):
        photos: list[Point] = []
        users: list[Point] = []
        for i in range(start, min(n, start + 2000)):
            uid = f"user_{i:07d}"
            v = rng.standard_normal((3, dim)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            pids = []
            for j in range(3):
                pid = photo_point_id(uid, f"{i:07d}{j}")
                pids.append(pid)
                photos.append(Point(pid, v[j], {"user_id": uid, "gender": "female", "age": 30, "photo_sha256": "x"}))
            mean = v.mean(axis=0)
            users.append(
                Point(
                    user_point_id(uid),
                    (mean / np.linalg.norm(mean)).astype(np.float32),
                    {
                        "user_id": uid,
                        "gender": "female" if i % 2 else "male",
                        "age": 18 + i % 40,
                        "seeking": ["male" if i % 2 else "female"],
                        "age_min": 18,
                        "age_max": 60,
                        "n_photos": 3,
                        "photo_ids": pids,
                    },
                )
            )
        store.upsert(PHOTOS, photos)
        store.upsert(USERS, users)
    store.optimize()
    store.close()
    return settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, action="append", help="population size (repeatable)")
    p.add_argument("--dim", type=int, default=512)
    args = p.parse_args()
    print("| users | photos | store MB | delete_user s | of which rewrite s |")
    print("|---|---|---|---|---|")
    for n in args.users or [1000]:
        tmp = Path(tempfile.mkdtemp(prefix="erasure-bench-"))
        try:
            settings = _build(tmp / "s", n, args.dim, seed=n)
            mb = sum(f.stat().st_size for f in (tmp / "s").rglob("*") if f.is_file()) / 2**20
            store = EdgeStore.open(settings)
            rewrite = 0.0
            finish = store.finish_erasure

            def timed(*, changed: bool = True, _finish=finish) -> bool:  # type: ignore[no-untyped-def]
                nonlocal rewrite
                t = time.perf_counter()
                out = _finish(changed=changed)
                rewrite = time.perf_counter() - t
                return out

            store.finish_erasure = timed  # type: ignore[method-assign]
            t0 = time.perf_counter()
            removed = delete_user(store, f"user_{n // 2:07d}", settings=settings)
            total = time.perf_counter() - t0
            store.close()
            assert removed == 4, removed
            print(f"| {n:,} | {3 * n:,} | {mb:.0f} | {total:.1f} | {rewrite:.1f} |")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
