"""A stray quote, a huge field: every affected row is reported, no row vanishes, line counts add up."""

from __future__ import annotations

from pathlib import Path

from engine.settings import Settings
from ingestion.metadata import load_metadata
from ingestion.records import Metadata
from ingestion.report import Reason

HEADER = "user_id,image_path,gender,age\n"
S = Settings(progress=False)


def _accounted(meta: Metadata, text: str) -> None:
    """Every line of the file is the header, blank, an accepted row or a rejected row, exactly once."""
    physical = len(text.splitlines())
    rows_rejected = sum(r.kind == "row" for r in meta.rejected)
    assert meta.lines == physical
    assert 1 + meta.blank_lines + meta.rows_accepted + rows_rejected == physical
    assert len({r.row for r in meta.rejected if r.kind == "row"}) == rows_rejected  # one reason per line


def test_stray_quote_costs_its_own_row_only(tmp_path: Path) -> None:
    text = (
        HEADER
        + "u1,u1/1.jpg,female,30\n"
        + 'u2,"still.webp,female,31\n'  # line 3: the quote is never closed
        + "u3,u3/1.jpg,male,32\n"
        + "u4,u4/1.jpg,female,33\n"
        + "u5,u5/1.jpg,male,34\n"
    )
    csv = tmp_path / "m.csv"
    csv.write_text(text)
    meta = load_metadata(csv, tmp_path, S)
    assert [(r.row, r.reason, r.user_id) for r in meta.rejected] == [(3, Reason.STRAY_QUOTE, "u2")]
    assert "lines 3-6" in meta.rejected[0].detail
    assert sorted(meta.users) == ["u1", "u3", "u4", "u5"]
    assert [(p.user_id, p.row) for p in meta.photos] == [("u1", 2), ("u3", 4), ("u4", 5), ("u5", 6)]
    _accounted(meta, text)


def test_a_quote_opened_on_one_line_and_closed_on_a_later_one_reports_both(tmp_path: Path) -> None:
    text = (
        HEADER
        + 'u1,"u1/1.jpg,female,30\n'  # 2: opens
        + "u2,u2/1.jpg,male,31\n"  # 3: swallowed
        + 'u3,u3/1.jpg",female,32\n'  # 4: closes
        + "\n"  # 5: blank
        + "u4,u4/1.jpg,male,33\n"
    )
    csv = tmp_path / "m.csv"
    csv.write_text(text)
    meta = load_metadata(csv, tmp_path, S)
    assert [(r.row, r.reason) for r in meta.rejected] == [(2, Reason.STRAY_QUOTE), (4, Reason.STRAY_QUOTE)]
    assert sorted(meta.users) == ["u2", "u4"]
    assert meta.blank_lines == 1
    _accounted(meta, text)


def test_stray_quote_on_the_last_line(tmp_path: Path) -> None:
    text = HEADER + "u1,u1/1.jpg,female,30\n" + 'u2,"u2/1.jpg,male,31'
    csv = tmp_path / "m.csv"
    csv.write_text(text)
    meta = load_metadata(csv, tmp_path, S)
    assert [(r.row, r.reason) for r in meta.rejected] == [(3, Reason.STRAY_QUOTE)]
    _accounted(meta, text)


def test_well_quoted_comma_in_a_path_is_accepted(tmp_path: Path) -> None:
    text = HEADER + '"u1","u1/a,b.jpg",female,30\n'
    csv = tmp_path / "m.csv"
    csv.write_text(text)
    meta = load_metadata(csv, tmp_path, S)
    assert not meta.rejected
    assert [p.rel_path for p in meta.photos] == ["u1/a,b.jpg"]
    _accounted(meta, text)


def test_a_field_over_the_csv_limit_rejects_that_row_only(tmp_path: Path) -> None:
    huge = "x" * 200_000
    text = HEADER + "u1,u1/1.jpg,female,30\n" + f"u2,{huge}.jpg,male,31\n" + "u3,u3/1.jpg,female,32\n"
    csv = tmp_path / "m.csv"
    csv.write_text(text)
    meta = load_metadata(csv, tmp_path, S)
    assert [(r.row, r.reason) for r in meta.rejected] == [(3, Reason.INVALID_FIELD)]
    assert "field larger than field limit" in meta.rejected[0].detail
    assert sorted(meta.users) == ["u1", "u3"]
    _accounted(meta, text)


def test_stray_quote_in_per_user_layout_names_the_row_for_the_photos(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("u1_1.jpg", "u2_1.jpg", "u3_1.jpg"):
        (photos / name).write_bytes(b"not read here")
    text = "user_id,gender,age\nu1,female,30\n" + 'u2,"male,31\n' + "u3,female,32\n"
    csv = tmp_path / "m.csv"
    csv.write_text(text)
    meta = load_metadata(csv, photos, S)
    rows = [(r.row, r.reason) for r in meta.rejected if r.kind == "row"]
    assert rows == [(3, Reason.STRAY_QUOTE)]
    (photo,) = [r for r in meta.rejected if r.kind == "photo"]
    assert photo.path == "u2_1.jpg" and "line 3" in photo.detail
    assert sorted(meta.users) == ["u1", "u3"]
    _accounted(meta, text)


def test_photo_files_no_row_names_are_reported_as_unlisted(tmp_path: Path) -> None:
    for rel in ("u1/1.jpg", "u1/2.JPG", "u2/1.png", "u9/1.webp", "u1/notes.txt", "u1/.hidden.jpg", ".cache/x.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"not read here")
    text = HEADER + "u1,u1/1.jpg,female,30\n" + "u2,u2/1.png,male,17\n"  # u2's row is rejected (age)
    csv = tmp_path / "m.csv"
    csv.write_text(text)
    meta = load_metadata(csv, tmp_path, S)
    unlisted = [r for r in meta.rejected if r.reason == Reason.UNLISTED_FILE]
    assert [(r.kind, r.path) for r in unlisted] == [("photo", "u1/2.JPG"), ("photo", "u9/1.webp")]
    assert "no metadata row names this file" in unlisted[0].detail
    # u2/1.png is named by a row (rejected for its age): reported once, as that row, never as unlisted.
    assert [(r.row, r.reason) for r in meta.rejected if r.kind == "row"] == [(3, Reason.INVALID_AGE)]
    _accounted(meta, text)


def test_unlisted_scan_covers_the_folder_that_holds_the_listed_photos(tmp_path: Path) -> None:
    # The demo's layout: photos/<user>/<n>.jpg listed, raw/ holding the other layout's copies.
    for rel in ("photos/u1/1.jpg", "photos/u2/1.jpg", "raw/profiles/u1_1.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    csv = tmp_path / "m.csv"
    csv.write_text(HEADER + "u1,photos/u1/1.jpg,female,30\n")
    meta = load_metadata(csv, tmp_path, S)
    assert [(r.reason, r.path) for r in meta.rejected] == [(Reason.UNLISTED_FILE, "photos/u2/1.jpg")]


def test_nfd_name_in_the_csv_finds_the_nfc_file_and_back(tmp_path: Path) -> None:
    import unicodedata

    nfc = unicodedata.normalize("NFC", "u1/zoë.jpg")
    nfd = unicodedata.normalize("NFD", "u2/zoë.jpg")
    assert nfc.encode() != unicodedata.normalize("NFD", nfc).encode()
    (tmp_path / "u1").mkdir()
    (tmp_path / "u2").mkdir()
    (tmp_path / nfc).write_bytes(b"x")
    (tmp_path / nfd).write_bytes(b"x")
    text = (
        HEADER
        + f"u1,{unicodedata.normalize('NFD', nfc)},female,30\n"  # CSV in NFD, disk in NFC
        + f"u2,{unicodedata.normalize('NFC', nfd)},male,30\n"  # and the other way round
    )
    csv = tmp_path / "m.csv"
    csv.write_text(text, encoding="utf-8")
    meta = load_metadata(csv, tmp_path, S)
    assert not meta.rejected
    assert [p.rel_path for p in meta.photos] == [nfc, nfd]  # the names as they are on disk
