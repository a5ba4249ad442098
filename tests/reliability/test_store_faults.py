"""Store faults the ingestion tests do not inject: the write is *applied* but its acknowledgement is lost (the
connection drops after the store took it), so the job's retry sends the same points again; and a per-user
layout whose photo is a symlink out of PHOTOS_DIR.

(Writes that fail *before* reaching the store, once or for good, are in tests/ingestion/test_job.py.)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from engine.errors import StoreUnavailable
from engine.schema import PHOTOS, USERS
from engine.settings import Settings
from engine.store import open_store
from engine.store.base import Point
from ingestion.job import run_ingest
from ingestion.report import Reason


def ack_lost_from(store: Any, collection: str, calls: set[int] | None, from_call: int | None) -> Any:
    """Wrap ``store.upsert``: on the chosen calls the points are written, *then* ``StoreUnavailable`` is raised."""
    inner = store.upsert
    n = {"calls": 0}

    def upsert(coll: str, points: Sequence[Point]) -> None:
        inner(coll, points)
        if coll == collection:
            n["calls"] += 1
            if (calls and n["calls"] in calls) or (from_call is not None and n["calls"] >= from_call):
                raise StoreUnavailable(f"connection reset after the write (call {n['calls']})")

    store.upsert = upsert
    return store


@pytest.mark.parametrize("collection", [PHOTOS, USERS])
def test_lost_acknowledgement_is_retried_without_doubles(collection, demo, rel_settings, pixel_embedder, exact):
    meta = demo / "metadata.csv"
    with open_store(rel_settings) as store:
        ack_lost_from(store, collection, calls={1, 2}, from_call=None)
        report = run_ingest(demo, meta, settings=rel_settings, encoder=pixel_embedder, store=store)
    assert report.completed
    d = exact(rel_settings, demo, meta, pixel_embedder)  # exact counts: the resent points were not doubled
    assert report.counts.photos_stored == len(d.photos)


def test_lost_acknowledgements_for_good_then_rerun(demo, rel_settings, pixel_embedder, exact, dump) -> None:
    """The store applies every write but never acknowledges from the 3rd on: the run gives up cleanly,
    claiming only what was acknowledged; the re-run finds the rest already stored and ends exact."""
    meta = demo / "metadata.csv"
    with open_store(rel_settings) as store:
        ack_lost_from(store, PHOTOS, calls=None, from_call=3)
        with pytest.raises(StoreUnavailable, match="run the same command again"):
            run_ingest(demo, meta, settings=rel_settings, encoder=pixel_embedder, store=store)
    half = dump(rel_settings)
    # Two batches acknowledged, the third applied though unacknowledged (and retried onto itself).
    assert len(half.photos) == 3 * rel_settings.ingest.write_batch_size and not half.users
    report = run_ingest(demo, meta, settings=rel_settings, encoder=pixel_embedder)
    assert report.completed and report.counts.photos_skipped == len(half.photos)
    exact(rel_settings, demo, meta, pixel_embedder)


def test_per_user_layout_symlink_out_of_photos_dir_is_never_read(
    tmp_path: Path, demo: Path, rel_settings: Settings, pixel_embedder, dump
) -> None:
    profiles = demo / "raw" / "profiles"
    outside = tmp_path / "outside" / "secret.jpg"
    outside.parent.mkdir()
    outside.write_bytes(next(profiles.iterdir()).read_bytes())
    first_user = sorted(profiles.iterdir())[0].name.rsplit("_", 1)[0]
    link = profiles / f"{first_user}_99.jpg"
    link.symlink_to(outside)
    opened: list[str] = []
    watching = True

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if watching and event == "open" and isinstance(args[0], str | bytes):
            opened.append(str(args[0]))

    sys.addaudithook(audit)  # cannot be removed; it stops recording when the test ends
    try:
        report = run_ingest(profiles, demo / "raw" / "users.csv", settings=rel_settings, encoder=pixel_embedder)
    finally:
        watching = False
    assert not [p for p in opened if str(outside.parent) in p]
    assert {r.path: r.reason for r in report.rejected} == {link.name: Reason.OUTSIDE_PHOTOS_DIR}
    assert link.name not in {p["source_path"] for p, _ in dump(rel_settings).photos.values()}
