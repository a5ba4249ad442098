"""Inputs a new user gets wrong, through the whole job: nothing is left out of the run report unsaid."""

from __future__ import annotations

from pathlib import Path

from ingestion.job import run_ingest
from ingestion.report import Reason


def test_stray_quote_report_counts_add_up_to_the_file(demo_copy: Path, tiny_encoder, ing_settings) -> None:
    meta = demo_copy / "metadata.csv"
    lines = meta.read_text(encoding="utf-8").splitlines()
    cells = lines[2].split(",")
    cells[1] = '"' + cells[1]  # a stray quote in image_path
    lines[2] = ",".join(cells)
    meta.write_text("\n".join([*lines, ""]) + "\n", encoding="utf-8")  # and a blank line at the end
    report = run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    c = report.counts
    # The row is rejected; its photo, which no valid row names now, is reported as unlisted.
    assert [(r.row, r.reason, r.path) for r in report.rejected] == [
        (3, Reason.STRAY_QUOTE, None),
        (None, Reason.UNLISTED_FILE, cells[1].lstrip('"')),
    ]
    assert c.metadata_lines == len(lines) + 1
    assert 1 + c.rows_accepted + c.rows_rejected + c.metadata_blank_lines == c.metadata_lines
    assert (c.rows_rejected, c.metadata_blank_lines, c.photos_seen) == (1, 1, len(lines) - 2)
    assert f"metadata: {len(lines) + 1} lines = 1 header + {len(lines) - 2} rows accepted + 1 rejected + 1 blank" in (
        report.summary()
    )


def _user_vectors_match_their_photos(d) -> None:
    """Every user point = normalised mean of exactly its stored photos; n_photos and photo_ids agree."""
    import numpy as np

    from engine.schema import user_point_id

    by_user: dict[str, list[str]] = {}
    for pid, (payload, _) in d.photos.items():
        by_user.setdefault(payload["user_id"], []).append(pid)
    for uid, pids in by_user.items():
        payload, vec = d.users[user_point_id(uid)]
        assert sorted(payload["photo_ids"]) == sorted(pids) and payload["n_photos"] == len(pids), uid
        mean = np.mean([d.photos[p][1] for p in pids], axis=0)
        np.testing.assert_allclose(vec, mean / np.linalg.norm(mean), atol=1e-5)


def test_photo_replaced_in_place_replaces_its_point(demo_copy: Path, tiny_encoder, ing_settings, dump, images) -> None:
    import numpy as np

    from engine.schema import user_point_id

    meta = demo_copy / "metadata.csv"
    run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    before = dump(ing_settings)
    uid, rel = next((p["user_id"], p["source_path"]) for p, _ in before.photos.values())
    n_before = before.users[user_point_id(uid)][0]["n_photos"]
    old_ids = {pid for pid, (p, _) in before.photos.items() if p["source_path"] == rel}
    assert len(old_ids) == 1
    target = demo_copy / rel
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[target.suffix.lower()]
    images.good(target, seed=4242, size=(120, 100), fmt=fmt)  # a new picture at the same path

    report = run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    after = dump(ing_settings)
    c = report.counts
    assert (c.photos_stored, c.photos_replaced, c.users_written) == (1, 1, 1)
    at_path = [pid for pid, (p, _) in after.photos.items() if p["source_path"] == rel]
    assert len(at_path) == 1 and at_path[0] not in old_ids
    assert len(after.photos) == len(before.photos)
    assert after.users[user_point_id(uid)][0]["n_photos"] == n_before
    _user_vectors_match_their_photos(after)
    old_vec = before.photos[next(iter(old_ids))][1]
    assert not any(np.array_equal(v, old_vec) for _, v in after.photos.values())
    # Other users untouched.
    for upid, (_, vec) in before.users.items():
        if upid != user_point_id(uid):
            np.testing.assert_array_equal(after.users[upid][1], vec)
    again = run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    assert (again.counts.photos_stored, again.counts.photos_replaced, again.counts.users_written) == (0, 0, 0)


def test_forgotten_row_is_reported_as_an_unlisted_photo(demo_copy: Path, tiny_encoder, ing_settings) -> None:
    meta = demo_copy / "metadata.csv"
    lines = meta.read_text(encoding="utf-8").splitlines()
    dropped = lines.pop(2)  # the user forgot this row; the file stays on disk
    meta.write_text("\n".join(lines) + "\n", encoding="utf-8")
    forgotten = dropped.split(",")[1]
    report = run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    assert [(r.kind, r.reason, r.path) for r in report.rejected] == [("photo", Reason.UNLISTED_FILE, forgotten)]
    c = report.counts
    assert (c.photos_unlisted, c.photos_rejected, c.rows_rejected) == (1, 0, 0)
    assert c.photos_seen == c.photos_stored == len(lines) - 1
    assert "unlisted: 1 photo file(s) under PHOTOS_DIR that no metadata row names" in report.summary()


def test_nfd_name_in_the_csv_is_stored(demo_copy: Path, tiny_encoder, ing_settings, dump) -> None:
    import unicodedata

    meta = demo_copy / "metadata.csv"
    lines = meta.read_text(encoding="utf-8").splitlines()
    cells = lines[1].split(",")
    old = demo_copy / cells[1]
    nfc = str(Path(cells[1]).with_name("zoë" + Path(cells[1]).suffix))
    old.rename(demo_copy / unicodedata.normalize("NFC", nfc))
    cells[1] = unicodedata.normalize("NFD", nfc)
    lines[1] = ",".join(cells)
    meta.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    assert not report.rejected, report.rejected
    paths = {p["source_path"] for p, _ in dump(ing_settings).photos.values()}
    assert unicodedata.normalize("NFC", nfc) in paths


def test_cli_lists_unlisted_files_on_stderr_and_exits_0(
    tmp_path: Path, tiny_encoder, images, monkeypatch, capsys
) -> None:
    import ingestion.job
    from matcher.cli import main

    monkeypatch.setattr(ingestion.job, "_load_encoder", lambda settings: tiny_encoder)
    root = tmp_path / "in"
    images.good(root / "u1" / "1.jpg", seed=1)
    images.good(root / "u2" / "1.jpg", seed=2)  # nobody's row names it
    (root / "m.csv").write_text("user_id,image_path,gender,age\nu1,u1/1.jpg,f,30\n")
    code = main(
        ["--store", str(tmp_path / "q"), "--no-progress", "ingest", str(root), "--metadata", str(root / "m.csv")]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "matcher ingest: 1 photo file(s) that no metadata row names, not ingested" in captured.err
    assert "unlisted_file: u2/1.jpg:" in captured.err
    assert "unlisted: 1 photo file(s) under PHOTOS_DIR" in captured.out


def test_user_whose_photos_were_all_rejected_is_reported_as_such(demo_copy: Path, tiny_encoder, ing_settings) -> None:
    import pytest

    from engine.errors import NoUserVector, UserNotFound
    from engine.recommend import recommend
    from engine.store import open_store
    from engine.users import delete_user

    meta = demo_copy / "metadata.csv"
    lines = meta.read_text(encoding="utf-8").splitlines()
    uid = lines[1].split(",")[0]
    for line in lines[1:]:
        if line.split(",")[0] == uid:
            (demo_copy / line.split(",")[1]).write_bytes(b"")  # every photo of this user: zero bytes
    report = run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    assert uid in report.users_without_photos
    with open_store(ing_settings) as store:
        with pytest.raises(NoUserVector) as info:
            recommend(uid, store=store, settings=ing_settings)
        assert "none of their photos was stored" in str(info.value) and "zero_bytes" in str(info.value)
        with pytest.raises(UserNotFound):  # a user that was never in the metadata stays "not in the store"
            recommend("nobody_at_all", store=store, settings=ing_settings)
        assert delete_user(store, uid, settings=ing_settings) == 1  # the record names the user: erased too
        with pytest.raises(UserNotFound):
            recommend(uid, store=store, settings=ing_settings)


def test_the_no_photos_record_goes_once_a_photo_is_stored(demo_copy: Path, tiny_encoder, ing_settings, images) -> None:
    import pytest

    from engine.errors import NoUserVector
    from engine.recommend import recommend
    from engine.store import open_store

    meta = demo_copy / "metadata.csv"
    lines = meta.read_text(encoding="utf-8").splitlines()
    uid = lines[1].split(",")[0]
    mine = [line.split(",")[1] for line in lines[1:] if line.split(",")[0] == uid]
    saved = {rel: (demo_copy / rel).read_bytes() for rel in mine}
    for rel in mine:
        (demo_copy / rel).write_bytes(b"")
    run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    with open_store(ing_settings) as store, pytest.raises(NoUserVector):
        recommend(uid, store=store, settings=ing_settings)
    for rel, data in saved.items():
        (demo_copy / rel).write_bytes(data)
    run_ingest(demo_copy, meta, settings=ing_settings, encoder=tiny_encoder)
    with open_store(ing_settings) as store:
        assert recommend(uid, store=store, settings=ing_settings)  # a match list now
