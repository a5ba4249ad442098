"""A worker process for the fault tests: runs the real ingestion job against the real embedded store, and can
stop (hang) at a chosen store write so that the test can SIGKILL it there, or hold the store open while
another process tries to use it.

Not a test module. Run as ``python ingest_child.py SPEC.json``; SPEC holds ``photos_dir``, ``metadata``,
``store_path``, ``backend``, ``write_batch_size`` and optionally ``hang`` = ``{"collection": "photos",
"call": 2, "when": "after"|"before", "marker": PATH}`` and ``release`` (a file the child waits for instead
of hanging forever); ``"collection": "optimize"`` stops just before ``optimize()``. The marker file gets
one JSON line: how many points of each collection the store had acknowledged when the child stopped.

The embedder is ``PixelEmbedder`` (numpy only): the store and the job are under test here, not the encoder,
and a child that imports torch would spend most of the test's time starting up.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.settings import IngestSettings, Settings
from engine.store import open_store
from engine.store.base import Point, Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, when run as a script
from store_wrappers import PassThroughStore  # noqa: E402


class PixelEmbedder:
    """A deterministic embedder without torch: 8x8 RGB thumbnail -> fixed random projection -> unit vector.

    Same image, same vector, in every process (the projection is seeded), so a test can recompute what the
    store must hold.
    """

    encoder_id = "pixel-8x8-proj32-v1"
    dim = 32

    def __init__(self) -> None:
        self._proj = np.random.default_rng(1234).standard_normal((8 * 8 * 3, self.dim)).astype(np.float32)

    def embed(self, images: Sequence[Image.Image], batch_size: int = 8) -> np.ndarray:
        rows = []
        for im in images:
            thumb = np.asarray(im.convert("RGB").resize((8, 8), Image.Resampling.BILINEAR), dtype=np.float32)
            v = (thumb.reshape(-1) / 255.0 - 0.5) @ self._proj
            rows.append(v / np.linalg.norm(v))
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)


class HangingStore(PassThroughStore):
    """The real store, which stops the process at the chosen ``upsert`` call of one collection."""

    def __init__(self, inner: Store, hang: dict[str, Any] | None, release: Path | None) -> None:
        super().__init__(inner)
        self.hang = hang
        self.release = release
        self.calls: dict[str, int] = {}
        self.acked: dict[str, int] = {}

    def _stop(self) -> None:
        assert self.hang is not None
        Path(self.hang["marker"]).write_text(json.dumps({"acked": self.acked, "calls": self.calls}) + "\n")
        while self.release is None or not self.release.exists():
            time.sleep(0.05)  # the parent kills us here (or creates the release file)

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        n = self.calls[collection] = self.calls.get(collection, 0) + 1
        at = self.hang is not None and self.hang["collection"] == collection and self.hang["call"] == n
        if at and self.hang is not None and self.hang["when"] == "before":
            self._stop()
        self.inner.upsert(collection, points)
        self.acked[collection] = self.acked.get(collection, 0) + len(points)
        if at and self.hang is not None and self.hang["when"] == "after":
            self._stop()

    def optimize(self) -> None:
        if self.hang is not None and self.hang["collection"] == "optimize":
            self._stop()  # every write done, indexes not built yet
        self.inner.optimize()


def child_settings(spec: dict[str, Any]) -> Settings:
    return Settings(
        store_path=Path(spec["store_path"]),
        store_backend=spec.get("backend", "edge"),
        progress=False,
        ingest=IngestSettings(write_batch_size=int(spec.get("write_batch_size", 8)), retry_attempts=1),
    )


def main(argv: list[str]) -> int:
    from ingestion.job import run_ingest

    spec = json.loads(Path(argv[1]).read_text())
    settings = child_settings(spec)
    release = Path(spec["release"]) if spec.get("release") else None
    store = HangingStore(open_store(settings), spec.get("hang"), release)
    try:
        report = run_ingest(
            Path(spec["photos_dir"]),
            Path(spec["metadata"]),
            settings=settings,
            encoder=PixelEmbedder(),
            store=store,
        )
    finally:
        store.close()
    print(json.dumps({"completed": report.completed, "stored": report.counts.photos_stored}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
