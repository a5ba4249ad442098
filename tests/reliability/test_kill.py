"""The worker process is SIGKILLed part way through an ingestion, then the same command is run again.

The child (tests/reliability/ingest_child.py) runs the real job on the real embedded store and stops at a
chosen write; the test kills it there with SIGKILL (no cleanup, no flush, no lock release by Python). What
must hold: every write the store acknowledged before the kill is still there and correct; the folder lock
died with the process (the re-run is not refused); no user vector in the killed state disagrees with the
photos stored (users are only written from stored photos); the re-run completes with exactly the expected
points, nothing lost, nothing doubled, every user vector the mean of that user's stored photos.
"""

from __future__ import annotations

import signal
from typing import Any

import numpy as np
import pytest

from engine.schema import PHOTOS, USERS, user_point_id
from engine.settings import Settings
from ingestion.job import run_ingest


def at(collection: str, call: int = 0, when: str = "after") -> dict[str, Any]:
    return {"collection": collection, "call": call, "when": when}


KILL_POINTS = [
    pytest.param("edge", at(PHOTOS, 2), id="edge-photos-written-2-batches"),
    pytest.param("edge", at(PHOTOS, 3, "before"), id="edge-photos-before-3rd-batch"),
    pytest.param("edge", at(USERS, 1), id="edge-users-part-written"),
    pytest.param("edge", at("optimize", when="before"), id="edge-before-optimize"),
    # qdrant-client's local mode (the fallback backend): ~15 s here, so with the slow tests.
    pytest.param("local", at(PHOTOS, 2), id="local-photos-written-2-batches", marks=pytest.mark.slow),
]


def user_vectors_agree_with_photos(d: Any) -> None:
    """Any user point present is the normalised mean of exactly that user's stored photo vectors."""
    by_user: dict[str, list[str]] = {}
    for pid, (payload, _) in d.photos.items():
        by_user.setdefault(payload["user_id"], []).append(pid)
    for upid, (payload, vec) in d.users.items():
        pids = by_user[payload["user_id"]]
        assert upid == user_point_id(payload["user_id"]) and sorted(payload["photo_ids"]) == sorted(pids)
        mean = np.mean([d.photos[p][1] for p in pids], axis=0)
        np.testing.assert_allclose(vec, mean / np.linalg.norm(mean), atol=1e-5)


@pytest.mark.parametrize(("backend", "hang"), KILL_POINTS)
def test_sigkill_mid_run_then_rerun_is_exact(
    backend: str,
    hang: dict[str, Any],
    spawn,
    demo,
    rel_settings: Settings,
    dump,
    expected,
    exact,
    pixel_embedder,
) -> None:
    settings = rel_settings.model_copy(update={"store_backend": backend})
    meta = demo / "metadata.csv"
    child = spawn(demo, settings, hang=hang)
    acked = child.wait_marker()["acked"]
    child.proc.send_signal(signal.SIGKILL)
    child.proc.communicate(timeout=60)
    assert child.proc.returncode == -signal.SIGKILL

    # What the store holds after the kill: at least every acknowledged write, each of them correct.
    want = expected(demo, meta, pixel_embedder.encoder_id)
    killed = dump(settings)  # opening it at all proves the dead process's lock is gone
    assert len(killed.photos) >= acked.get(PHOTOS, 0) > 0 and set(killed.photos) <= set(want)
    n_users = len({p["user_id"] for p in want.values()})
    if hang["collection"] == PHOTOS:  # users are written only once every photo is
        assert 0 < len(killed.photos) < len(want) and not killed.users
    elif hang["collection"] == USERS:
        assert set(killed.photos) == set(want) and acked[USERS] <= len(killed.users) < n_users
    else:  # killed before optimize(): every point written, the index not built
        assert set(killed.photos) == set(want) and len(killed.users) == n_users
    for pid, (payload, vec) in killed.photos.items():
        assert payload == {**payload, **want[pid]}
        assert abs(float(np.linalg.norm(vec)) - 1) < 1e-5
    user_vectors_agree_with_photos(killed)

    report = run_ingest(demo, meta, settings=settings, encoder=pixel_embedder)
    assert report.completed and report.optimized
    assert report.counts.photos_skipped == len(killed.photos)
    assert report.counts.photos_stored == len(want) - len(killed.photos)
    final = exact(settings, demo, meta, pixel_embedder)
    for pid, (_, vec) in killed.photos.items():  # what survived the kill was kept as it was, not rewritten
        np.testing.assert_array_equal(final.photos[pid][1], vec)
