"""The ingestion job end to end: real demo photos, the tiny real encoder, the real embedded store.

Expected points are computed here independently of the job: photo ids from the files' bytes, user vectors
as the normalised mean of the photo vectors found in the store.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from store_expectations import expected_photos
from store_wrappers import PassThroughStore

from engine.errors import EncoderMismatch, StoreUnavailable
from engine.schema import PHOTOS, USERS, user_point_id
from engine.settings import Settings
from engine.store import open_store
from engine.store.base import Point, Store
from ingestion.job import run_ingest
from ingestion.report import IngestReport, Reason


def check_user_vectors(d) -> None:
    """Every user point = normalised mean of exactly its stored photos; photo_ids and n_photos match."""
    by_user: dict[str, list[str]] = {}
    for pid, (payload, _) in d.photos.items():
        by_user.setdefault(payload["user_id"], []).append(pid)
    assert {user_point_id(u) for u in by_user} == set(d.users)
    for uid, pids in by_user.items():
        payload, vec = d.users[user_point_id(uid)]
        assert sorted(payload["photo_ids"]) == sorted(pids) and payload["n_photos"] == len(pids)
        mean = np.mean([d.photos[p][1] for p in pids], axis=0)
        np.testing.assert_allclose(vec, mean / np.linalg.norm(mean), atol=1e-5)
        assert vec.dtype == np.float32 and abs(np.linalg.norm(vec) - 1) < 1e-5


def payloads_have_no_bytes(d) -> None:
    for payload, _ in [*d.photos.values(), *d.users.values()]:
        assert len(json.dumps(payload)) < 4000
        assert not any(isinstance(v, bytes | bytearray) for v in payload.values())


def test_demo_ingest_stores_every_photo_and_user_once(
    demo_copy, tiny_encoder, ing_settings, dump, tmp_path
) -> None:
    report_path = tmp_path / "report.json"
    report = run_ingest(
        demo_copy,
        demo_copy / "metadata.csv",
        settings=ing_settings,
        encoder=tiny_encoder,
        report_path=report_path,
    )
    want = expected_photos(demo_copy, demo_copy / "metadata.csv", tiny_encoder.encoder_id)
    d = dump(ing_settings)
    assert {pid: p for pid, (p, _) in d.photos.items()} == want
    truth = json.loads((demo_copy / "truth.json").read_text())
    assert {p["user_id"] for p in want.values()} == set(truth["users"])
    check_user_vectors(d)
    payloads_have_no_bytes(d)
    # User payload fields straight from the CSV.
    with open(demo_copy / "metadata.csv", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    upay = d.users[user_point_id(row["user_id"])][0]
    assert upay["seeking"] == sorted(row["seeking"].split("|")) and upay["age"] == int(row["age"])
    assert upay["age_min"] == (int(row["age_min"]) if row["age_min"] else 18)
    assert upay["encoder_id"] == tiny_encoder.encoder_id
    # A stored photo vector is the encoder's embedding of that very file.
    pid, (payload, vec) = sorted(d.photos.items())[0]
    with Image.open(demo_copy / payload["source_path"]) as im:
        img = ImageOps.exif_transpose(im).convert("RGB")
    np.testing.assert_allclose(vec, tiny_encoder.embed([img])[0], atol=1e-4)

    c = report.counts
    assert (c.photos_seen, c.photos_stored, c.photos_skipped, c.photos_rejected) == (
        len(want),
        len(want),
        0,
        0,
    )
    assert (
        c.users_written == len(truth["users"])
        and not report.rejected
        and report.completed
        and report.optimized
    )
    on_disk = IngestReport.read(report_path)
    assert on_disk.counts == c and on_disk.completed
    assert on_disk.stage_seconds.encode > 0 and on_disk.stage_seconds.total >= on_disk.stage_seconds.encode


def test_rerun_changes_nothing(demo_copy, tiny_encoder, ing_settings, dump) -> None:
    run_ingest(demo_copy, demo_copy / "metadata.csv", settings=ing_settings, encoder=tiny_encoder)
    first = dump(ing_settings)
    again = run_ingest(demo_copy, demo_copy / "metadata.csv", settings=ing_settings, encoder=tiny_encoder)
    second = dump(ing_settings)
    c = again.counts
    assert (c.photos_stored, c.photos_skipped, c.photos_updated, c.users_written) == (
        0,
        len(first.photos),
        0,
        0,
    )
    assert first.photos.keys() == second.photos.keys() and first.users.keys() == second.users.keys()
    for coll_a, coll_b in ((first.photos, second.photos), (first.users, second.users)):
        for pid, (pay, vec) in coll_a.items():
            assert {k: v for k, v in coll_b[pid][0].items()} == pay
            np.testing.assert_array_equal(coll_b[pid][1], vec)


def test_adding_a_photo_updates_only_that_user(demo_copy, tiny_encoder, ing_settings, dump, images) -> None:
    meta = demo_copy / "metadata.csv"
    run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    before = dump(ing_settings)
    lines = meta.read_text(encoding="utf-8").splitlines()
    first = lines[1].split(",")
    uid = first[0]
    images.good(demo_copy / "photos" / uid / "new.jpg", seed=99, size=(200, 200))
    meta.write_text("\n".join([*lines, ",".join([uid, f"photos/{uid}/new.jpg", *first[2:]])]) + "\n")
    report = run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    after = dump(ing_settings)
    assert report.counts.photos_stored == 1 and report.counts.users_written == 1
    assert len(after.photos) == len(before.photos) + 1
    check_user_vectors(after)
    for upid, (_, vec) in before.users.items():
        changed = not np.array_equal(after.users[upid][1], vec)
        assert changed == (upid == user_point_id(uid)), upid


def test_prune_removes_what_left_the_metadata(demo_copy, tiny_encoder, ing_settings, dump) -> None:
    meta = demo_copy / "metadata.csv"
    run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    lines = meta.read_text(encoding="utf-8").splitlines()
    removed = lines.pop(1)  # the first photo of the first user
    meta.write_text("\n".join(lines) + "\n")
    kept = run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    assert kept.counts.photos_pruned == 0 and len(dump(ing_settings).photos) == len(lines)  # header + 1 gone
    pruned = run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder, prune=True)
    assert pruned.counts.photos_pruned == 1 and pruned.counts.users_written == 1
    d = dump(ing_settings)
    assert set(d.photos) == set(expected_photos(demo_copy, meta, tiny_encoder.encoder_id))
    gone_user, gone_path = removed.split(",")[:2]
    assert all(p["source_path"] != gone_path for p, _ in d.photos.values())
    assert d.users[user_point_id(gone_user)][0]["n_photos"] >= 1
    check_user_vectors(d)


def test_delete_user_leaves_no_point(demo_copy, tiny_encoder, ing_settings, dump) -> None:
    users = pytest.importorskip("engine.users", reason="engine.users (delete-user) not written yet")
    run_ingest(demo_copy, demo_copy / "metadata.csv", settings=ing_settings, encoder=tiny_encoder)
    uid = next(iter(json.loads((demo_copy / "truth.json").read_text())["users"]))
    with open_store(ing_settings) as store:
        users.delete_user(store, uid)
    d = dump(ing_settings)
    assert user_point_id(uid) not in d.users and all(p["user_id"] != uid for p, _ in d.photos.values())
    assert d.photos and d.users


def test_per_user_layout_of_the_demo(demo_copy, tiny_encoder, ing_settings, dump) -> None:
    profiles = demo_copy / "raw" / "profiles"
    report = run_ingest(
        profiles, demo_copy / "raw" / "users.csv", settings=ing_settings, encoder=tiny_encoder
    )
    n_files = len(list(profiles.iterdir()))
    d = dump(ing_settings)
    assert report.layout == "per_user" and not report.rejected
    assert len(d.photos) == n_files == report.counts.photos_stored
    assert {p["source_path"] for p, _ in d.photos.values()} == {f.name for f in profiles.iterdir()}
    check_user_vectors(d)


# -- hostile input --------------------------------------------------------------------------------


def build_hostile(root: Path, outside: Path, images) -> tuple[Path, dict[str, Reason], set[str]]:
    """A per-photo folder mixing good photos with every bad case -> (csv, path -> reason, good paths)."""
    p = root / "photos"
    good = {
        "photos/u1/1.jpg": images.good(p / "u1" / "1.jpg", seed=1),
        "photos/u1/2.png": images.good(p / "u1" / "2.png", seed=2),
        "photos/u2/1.jpg": images.good(p / "u2" / "1.jpg", seed=3),
        "photos/u4/anim.gif": p / "u4" / "anim.gif",
    }
    (p / "u4").mkdir(parents=True)
    frames = [Image.new("RGB", (80, 80), c) for c in [(250, 0, 0), (0, 0, 250)]]
    frames[0].save(good["photos/u4/anim.gif"], save_all=True, append_images=frames[1:], duration=100)
    (p / "u3").mkdir()
    shutil.copy(p / "u2" / "1.jpg", p / "u2" / "copy.jpg")
    (p / "u3" / "trunc.jpg").write_bytes(images.good(p / "tmp.jpg", seed=4).read_bytes()[:300])
    (p / "tmp.jpg").unlink()
    (p / "u3" / "zero.jpg").write_bytes(b"")
    (p / "u3" / "text.jpg").write_text("not an image\n" * 10)
    images.bomb(p / "u3" / "bomb.png", 7000)
    Image.new("RGB", (1, 1)).save(p / "u3" / "tiny.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(p / "u3" / "big.png")
    secret = images.good(outside / "secret.jpg", seed=5)
    (p / "u3" / "link.jpg").symlink_to(secret)
    bad = {
        "photos/u2/copy.jpg": Reason.DUPLICATE_PHOTO,
        "photos/u3/trunc.jpg": Reason.TRUNCATED,
        "photos/u3/zero.jpg": Reason.ZERO_BYTES,
        "photos/u3/text.jpg": Reason.NOT_AN_IMAGE,
        "photos/u3/bomb.png": Reason.TOO_LARGE,
        "photos/u3/tiny.png": Reason.TOO_SMALL,
        "photos/u3/big.png": Reason.TOO_LARGE,
        "photos/u3/link.jpg": Reason.OUTSIDE_PHOTOS_DIR,
        "photos/u3/missing.jpg": Reason.MISSING_FILE,
        "../outside/secret.jpg": Reason.OUTSIDE_PHOTOS_DIR,
        str(secret): Reason.OUTSIDE_PHOTOS_DIR,
        "photos/u5/a.jpg": Reason.INVALID_AGE,
        "photos/u6/a.jpg": Reason.INVALID_GENDER,
        "photos/u7/a.jpg": Reason.FORMULA,
    }
    rows = [f"u1,{k},f,30,,," for k in ("photos/u1/1.jpg", "photos/u1/2.png")]
    rows += [f"u2,{k},m,31,f,,40" for k in ("photos/u2/1.jpg", "photos/u2/copy.jpg")]
    rows += ["u4,photos/u4/anim.gif,nb,40,,,"]
    rows += [f"u3,{k},f,25,,," for k in bad if k.startswith("photos/u3/") or not k.startswith("photos/")]
    rows += [
        "u5,photos/u5/a.jpg,f,17,,,",
        "u6,photos/u6/a.jpg,x,30,,,",
        "u7,photos/u7/a.jpg,f,30,=cmd|' /C calc'!A0,,",
    ]
    rows += ["u1,photos/u1/1.jpg,f,30,,,"]  # duplicated row (line 20)
    text = "\ufeffuser_id,image_path,gender,age,seeking,age_min,age_max\n" + "\n".join(rows) + "\n"
    data = text.encode("utf-8") + b"u8,photos/u8/caf\xe9.jpg,f,30,,,\n"  # a non-UTF-8 row (line 21)
    csv_path = root / "metadata.csv"
    csv_path.write_bytes(data)
    return csv_path, bad, set(good)


def test_hostile_folder_good_stored_bad_reported(tmp_path, tiny_encoder, dump, images) -> None:
    import sys

    root, outside = tmp_path / "in", tmp_path / "outside"
    root.mkdir()
    csv_path, bad, good = build_hostile(root, outside, images)
    settings = Settings(store_path=tmp_path / "q", progress=False)
    settings.images.max_file_bytes = 200_000  # so big.png (~270 KB) is over it
    opened: list[str] = []
    watching = True

    def audit(event: str, args: tuple) -> None:
        if watching and event == "open" and isinstance(args[0], str | bytes):
            opened.append(str(args[0]))

    sys.addaudithook(audit)
    try:
        report = run_ingest(
            root, csv_path, settings=settings, encoder=tiny_encoder, report_path=tmp_path / "r.json"
        )
    finally:
        watching = False
    # Nothing outside PHOTOS_DIR was opened (the metadata file sits in it here; the store is elsewhere).
    assert not [p for p in opened if str(outside) in p]

    d = dump(settings)
    assert {p["source_path"] for p, _ in d.photos.values()} == good
    got = {r.path: r.reason for r in report.rejected if r.path is not None}
    assert {k: got.get(k.replace("'", "")) for k in bad} == bad
    by_row = {r.row: r for r in report.rejected}
    assert by_row[20].reason == Reason.DUPLICATE_ROW and by_row[21].reason == Reason.NOT_UTF8
    assert report.users_without_photos == ["u3"] and user_point_id("u3") not in d.users
    assert [n.path for n in report.notices] == ["photos/u4/anim.gif"]
    check_user_vectors(d)
    payloads_have_no_bytes(d)
    # No report string a spreadsheet would run; no raw non-UTF-8 byte.
    raw = (tmp_path / "r.json").read_text(encoding="utf-8")
    strings: list[str] = []

    def walk(x: object) -> None:
        if isinstance(x, str):
            strings.append(x)
        elif isinstance(x, dict | list):
            for v in x.values() if isinstance(x, dict) else x:
                walk(v)

    walk(json.loads(raw))
    assert not [s for s in strings if s[:1] in ("=", "+", "@", "\t", "\r")]
    assert by_row[19].reason == Reason.FORMULA and by_row[19].field == "seeking"
    assert "caf\\\\xe9" in raw


def test_cli_exit_status_says_whether_anything_was_rejected(
    tmp_path, tiny_encoder, images, monkeypatch
) -> None:
    import ingestion.job
    from matcher.cli import main

    monkeypatch.setattr(ingestion.job, "_load_encoder", lambda settings: tiny_encoder)
    root = tmp_path / "in"
    images.good(root / "a.jpg", seed=1)
    (root / "b.jpg").write_bytes(b"")
    (root / "m.csv").write_text("user_id,image_path,gender,age\nu1,a.jpg,f,30\n")
    store = ["--store", str(tmp_path / "q"), "--no-progress"]
    assert main([*store, "ingest", str(root), "--metadata", str(root / "m.csv")]) == 0
    (root / "m.csv").write_text("user_id,image_path,gender,age\nu1,a.jpg,f,30\nu1,b.jpg,f,30\n")
    report = tmp_path / "r.json"
    args = [*store, "ingest", str(root), "--metadata", str(root / "m.csv"), "--report", str(report)]
    assert main(args) == 1
    assert [r.reason for r in IngestReport.read(report).rejected] == [Reason.ZERO_BYTES]
    (root / "bad.csv").write_text("user_id,gender\nu1,f\n")
    assert main([*store, "ingest", str(root), "--metadata", str(root / "bad.csv")]) == 2


def test_another_encoder_is_refused_unless_rebuild(demo_copy, tiny_encoder, ing_settings, dump) -> None:
    class Renamed:
        encoder_id = "other-encoder"
        dim = tiny_encoder.dim

        def embed(self, images, batch_size: int = 8):
            return tiny_encoder.embed(images, batch_size=batch_size)

    meta = demo_copy / "metadata.csv"
    run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    with pytest.raises(EncoderMismatch):
        run_ingest(demo_copy, meta, settings=ing_settings, encoder=Renamed())
    report = run_ingest(demo_copy, meta, settings=ing_settings, encoder=Renamed(), rebuild=True)
    d = dump(ing_settings)
    assert report.counts.photos_skipped == 0 and report.counts.photos_stored == len(d.photos)
    assert {p["encoder_id"] for p, _ in [*d.photos.values(), *d.users.values()]} == {"other-encoder"}


def test_other_user_payload_fields_survive_a_rewrite(
    demo_copy, tiny_encoder, ing_settings, dump, images
) -> None:
    meta = demo_copy / "metadata.csv"
    run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    lines = meta.read_text(encoding="utf-8").splitlines()
    first = lines[1].split(",")
    uid = first[0]
    with open_store(ing_settings) as store:
        (pt,) = store.retrieve(USERS, [user_point_id(uid)], with_vectors=True)
        store.upsert(USERS, [Point(pt.id, pt.vector, {**pt.payload, "liked_ids": ["user_002"]})])
    n_before = pt.payload["n_photos"]
    images.good(demo_copy / "photos" / uid / "new.jpg", seed=98, size=(200, 200))
    meta.write_text("\n".join([*lines, ",".join([uid, f"photos/{uid}/new.jpg", *first[2:]])]) + "\n")
    run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    payload = dump(ing_settings).users[user_point_id(uid)][0]
    assert payload["liked_ids"] == ["user_002"] and payload["n_photos"] == n_before + 1


# -- store failures ------------------------------------------------------------------------------------------


class FlakyStore(PassThroughStore):
    """A real store that raises ``StoreUnavailable`` on chosen ``upsert`` calls (1-based, per collection)."""

    def __init__(
        self, inner: Store, collection: str, fail_calls: Sequence[int] | None, fail_from: int | None
    ):
        super().__init__(inner)
        self.collection = collection
        self.fail_calls = set(fail_calls or ())
        self.fail_from = fail_from
        self.calls = 0

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        if collection == self.collection:
            self.calls += 1
            if self.calls in self.fail_calls or (self.fail_from is not None and self.calls >= self.fail_from):
                raise StoreUnavailable(f"injected failure on upsert call {self.calls}")
        self.inner.upsert(collection, points)

def test_transient_store_failures_are_retried(demo_copy, tiny_encoder, ing_settings, dump) -> None:
    meta = demo_copy / "metadata.csv"
    flaky = FlakyStore(open_store(ing_settings), PHOTOS, fail_calls=[2, 3], fail_from=None)
    with flaky:
        report = run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder, store=flaky)
    assert flaky.calls >= 4
    want = expected_photos(demo_copy, meta, tiny_encoder.encoder_id)
    d = dump(ing_settings)
    assert report.completed and report.counts.photos_stored == len(want) and set(d.photos) == set(want)
    check_user_vectors(d)


@pytest.mark.parametrize("collection", [PHOTOS, USERS])
def test_store_down_part_way_then_rerun_ends_exact(
    demo_copy, tiny_encoder, ing_settings, dump, tmp_path, collection
):
    meta = demo_copy / "metadata.csv"
    fail_from = 3 if collection == PHOTOS else 1
    with FlakyStore(open_store(ing_settings), collection, fail_calls=None, fail_from=fail_from) as store:
        with pytest.raises(StoreUnavailable, match="run the same command again"):
            run_ingest(
                demo_copy,
                meta,
                settings=ing_settings,
                encoder=tiny_encoder,
                store=store,
                report_path=tmp_path / "r",
            )
    partial = IngestReport.read(tmp_path / "r")
    assert not partial.completed and "StoreUnavailable" in (partial.error or "")
    half = dump(ing_settings)
    want = expected_photos(demo_copy, meta, tiny_encoder.encoder_id)
    if collection == PHOTOS:  # two batches of 16 acknowledged before the store went down: kept
        assert len(half.photos) == 2 * ing_settings.ingest.write_batch_size == partial.counts.photos_stored
        assert not half.users
    else:  # every photo written, no user yet
        assert set(half.photos) == set(want) and not half.users
    report = run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    d = dump(ing_settings)
    assert report.completed and report.counts.photos_skipped == len(half.photos)
    assert {pid: p for pid, (p, _) in d.photos.items()} == want
    check_user_vectors(d)
    for pid, (_, vec) in half.photos.items():
        np.testing.assert_array_equal(d.photos[pid][1], vec)


# -- killed mid-run ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_ends_exact(demo_copy, tiny_checkpoint, tiny_encoder, ing_settings, dump):
    """A real ``matcher ingest`` process killed with SIGKILL after its second photo batch is acknowledged."""
    import os
    import signal
    import subprocess
    import sys

    meta = demo_copy / "metadata.csv"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MATCHER_ENCODER__PIXEL_BUDGET": str(64 * 64),
        "MATCHER_ENCODER__DIM": "32",
        "MATCHER_ENCODER__DEVICE": "cpu",
        "MATCHER_ENCODER__DTYPE": "float32",
        "MATCHER_ENCODER__BATCH_SIZE": "2",
        "MATCHER_INGEST__WRITE_BATCH_SIZE": "4",
    }
    cmd = [sys.executable, "-m", "matcher.cli", "--store", str(ing_settings.store_path), "--no-progress", "-v"]
    cmd += ["ingest", str(demo_copy), "--metadata", str(meta), "--encoder", str(tiny_checkpoint)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    killed = False
    try:
        for line in proc.stderr:
            if "wrote 4 photos (8 this run)" in line:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert killed and proc.returncode == -signal.SIGKILL
    half = dump(ing_settings)
    want = expected_photos(demo_copy, meta, tiny_encoder.encoder_id)
    assert 8 <= len(half.photos) < len(want)  # stopped part way, acknowledged batches kept
    report = run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    d = dump(ing_settings)
    assert report.counts.photos_skipped == len(half.photos)
    assert report.counts.photos_stored == len(want) - len(half.photos)
    assert {pid: p for pid, (p, _) in d.photos.items()} == want
    check_user_vectors(d)
