"""Ingestion throughput: photos/s of ``run_ingest`` on demo photos, the share of time per stage, and the
write stage alone in photos/s.

Part 1 runs the real job (reader → preprocess → encode → write → user vectors → reciprocity → optimize) on the
first ``--photos`` photos of a demo population made by ``make_demo_data``, with the tiny test encoder (built
here, no download) unless ``--encoder`` names another one, into a fresh embedded store. The stage shares are
of the per-photo pipeline (read + preprocess + encode + write); "non-encoder ms/photo" is what ingestion
itself adds per photo, to compare with a real encoder's seconds per photo (bench/encoder.py).

Part 2 times the write stage alone: ``--photos`` photo points of dimension ``--dim`` (random unit vectors,
the job's payloads) upserted in ``ingest.write_batch_size`` batches into a fresh store of each backend asked.

Targets (issue 3): non-encoder time under 15 % of the wall time with the real-size encoder; the write stage at
least 2,000 photos/s into the embedded store (5,000 on the Edge default).

    OMP_NUM_THREADS=2 python bench/ingest.py                  # 2,000 photos, tiny encoder, Edge
    python bench/ingest.py --photos 100 --backend edge --backend local   # quick check
"""

from __future__ import annotations

import argparse
import csv
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from engine.schema import PHOTOS, photo_point_id  # noqa: E402
from engine.settings import IngestSettings, Settings  # noqa: E402
from engine.store import open_store  # noqa: E402
from engine.store.base import Point  # noqa: E402

PIPELINE = ("read", "preprocess", "encode", "write")


def demo_subset(work: Path, photos: int, seed: int) -> tuple[Path, Path]:
    """A demo population with at least ``photos`` photos; metadata cut to the first ``photos`` rows."""
    from evaluation.demo_data import make_demo_data

    users = max(1, photos // 2)  # the demo draws 1-4 photos per user (mean 2.5): enough, seldom far over
    demo = make_demo_data(work / "demo", users=users, seed=seed)
    with open(demo / "metadata.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    if len(body) < photos:
        raise SystemExit(f"demo data has {len(body)} photos, fewer than --photos {photos}")
    meta = work / "metadata.csv"
    with open(meta, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([header, *body[:photos]])
    return demo, meta


def run_job(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from ingestion.job import run_ingest
    from training.encoder import load_encoder

    t0 = time.perf_counter()
    demo, meta = demo_subset(work, args.photos, args.seed)
    t_data = time.perf_counter() - t0
    if args.encoder:
        encoder = load_encoder(args.encoder, device="cpu", dtype="float32")
    else:
        from training.tiny import build_tiny_checkpoint

        ckpt = build_tiny_checkpoint(work / "tiny", seed=0)
        encoder = load_encoder(ckpt, device="cpu", dtype="float32", pixel_budget=64 * 64, dim=32)
    settings = Settings(store_path=work / "store-job", store_backend=args.backend[0], progress=False)
    report = run_ingest(demo, meta, settings=settings, encoder=encoder)
    s = report.stage_seconds
    pipe = sum(getattr(s, k) for k in PIPELINE)
    non_encoder = pipe - s.encode
    return {
        "photos": report.counts.photos_seen,
        "stored": report.counts.photos_stored,
        "rejected": report.counts.photos_rejected,
        "encoder_id": report.encoder_id,
        "backend": report.store_backend,
        "demo_data_s": t_data,
        "stages_s": s.model_dump(),
        "share_of_pipeline": {k: (getattr(s, k) / pipe if pipe else 0.0) for k in PIPELINE},
        "photos_per_s_total": report.photos_per_second,
        "photos_per_s_pipeline": report.counts.photos_seen / pipe if pipe else 0.0,
        "write_photos_per_s": report.write_photos_per_second,
        "non_encoder_ms_per_photo": 1000 * non_encoder / max(report.counts.photos_seen, 1),
        "encode_ms_per_photo": 1000 * s.encode / max(report.counts.photos_seen, 1),
    }


def write_only(backend: str, n: int, dim: int, batch: int, work: Path) -> dict[str, Any]:
    """Upsert ``n`` photo points (the job's payloads) in batches; photos/s of the upserts alone."""
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    points = []
    for i in range(n):
        uid, sha = f"user_{i // 3:06d}", f"{i:064x}"
        payload = {
            "user_id": uid,
            "gender": ("female", "male", "nonbinary")[i % 3],
            "age": 18 + i % 50,
            "photo_sha256": sha,
            "source_path": f"photos/{uid}/{i % 3 + 1}.jpg",
            "encoder_id": "bench",
        }
        points.append(Point(id=photo_point_id(uid, sha), vector=vecs[i], payload=payload))
    settings = Settings(
        store_path=work / f"store-write-{backend}",
        store_backend=backend,  # type: ignore[arg-type]
        progress=False,
        ingest=IngestSettings(write_batch_size=batch),
    )
    with open_store(settings) as store:
        store.setup("bench", dim)
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            store.upsert(PHOTOS, points[i : i + batch])
        secs = time.perf_counter() - t0
        if store.count(PHOTOS) != n:
            raise RuntimeError(f"{backend}: {store.count(PHOTOS)} points stored, expected {n}")
    return {
        "backend": backend,
        "photos": n,
        "dim": dim,
        "batch": batch,
        "seconds": secs,
        "photos_per_s": n / secs,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--photos", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encoder", help="encoder to use instead of the tiny test one (path or hub id)")
    p.add_argument("--backend", action="append", choices=["edge", "local"], help="repeatable; default edge")
    p.add_argument("--dim", type=int, default=512, help="vector size for the write-only part")
    p.add_argument("--write-batch", type=int, default=IngestSettings().write_batch_size)
    p.add_argument("--skip-job", action="store_true", help="only the write-only part")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = p.parse_args(argv)
    args.backend = args.backend or ["edge"]
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    results: dict[str, Any] = {"threads": os.environ.get("OMP_NUM_THREADS", "unset"), "cpus": os.cpu_count()}
    try:
        if not args.skip_job:
            job = run_job(args, work)
            results["job"] = job
            st = job["stages_s"]
            print(f"ingest job: {job['photos']} photos ({job['stored']} stored, {job['rejected']} rejected), "
                  f"encoder {job['encoder_id']}, backend {job['backend']}")  # fmt: skip
            print(f"{'stage':<12}{'seconds':>10}{'share':>9}")
            for k in PIPELINE:
                print(f"{k:<12}{st[k]:>10.3f}{job['share_of_pipeline'][k]:>9.1%}")
            for k in ("metadata", "setup", "users", "reciprocity", "optimize", "total"):
                print(f"{k:<12}{st[k]:>10.3f}{'':>9}")
            wps = job["write_photos_per_s"]
            print(
                f"photos/s: {job['photos_per_s_total']:.1f} whole run after setup, {job['photos_per_s_pipeline']:.1f} "
                f"pipeline; write stage {wps:.0f} photos/s"
                if wps
                else "write stage: nothing written"
            )
            print(
                f"per photo: encode {job['encode_ms_per_photo']:.2f} ms, everything else in the pipeline "
                f"{job['non_encoder_ms_per_photo']:.2f} ms"
            )
        print(f"\nwrite stage alone ({args.photos} photos, dim {args.dim}, batches of {args.write_batch}):")
        results["write_only"] = []
        for backend in args.backend:
            r = write_only(backend, args.photos, args.dim, args.write_batch, work)
            results["write_only"].append(r)
            print(f"  {backend:<6} {r['seconds']:8.3f} s  {r['photos_per_s']:10.0f} photos/s")
        if args.json:
            print(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
