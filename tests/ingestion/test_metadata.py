"""Metadata parsing: both layouts, each bad row rejected with file, line, field and reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import InvalidInput
from engine.settings import Settings
from ingestion.metadata import load_metadata
from ingestion.report import Reason

HEADER = "user_id,image_path,gender,age,seeking,age_min,age_max\n"
S = Settings(progress=False)


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def reasons(meta) -> dict[int | None, Reason]:
    return {r.row: r.reason for r in meta.rejected}


def test_per_photo_rows_become_users_and_photos(tmp_path: Path) -> None:
    csv = write(
        tmp_path / "m.csv",
        HEADER + "u1,p/u1/1.jpg,F,30,,,\nu1,p/u1/2.jpg,f,30,,,\nu2,p/u2/1.jpg,NB,44,female|M,25,50\n",
    )
    meta = load_metadata(csv, tmp_path, S)
    assert meta.layout == "per_photo" and not meta.rejected
    assert [(p.user_id, p.rel_path, p.row) for p in meta.photos] == [
        ("u1", "p/u1/1.jpg", 2),
        ("u1", "p/u1/2.jpg", 3),
        ("u2", "p/u2/1.jpg", 4),
    ]
    u1, u2 = meta.users["u1"], meta.users["u2"]
    assert (u1.gender, u1.age, u1.seeking, u1.age_min, u1.age_max) == ("female", 30, ("male",), 18, 120)
    assert (u2.gender, u2.seeking, u2.age_min, u2.age_max) == ("nonbinary", ("female", "male"), 25, 50)


def test_nonbinary_default_seeking_is_everyone(tmp_path: Path) -> None:
    csv = write(tmp_path / "m.csv", "user_id,image_path,gender,age\nu1,a.jpg,nonbinary,30\n")
    assert load_metadata(csv, tmp_path, S).users["u1"].seeking == ("female", "male", "nonbinary")


def test_bom_and_header_case_are_tolerated(tmp_path: Path) -> None:
    csv = write(tmp_path / "m.csv", b"\xef\xbb\xbfUser_ID, Image_Path ,Gender,AGE\r\nu1,a.jpg,m,30\r\n")
    meta = load_metadata(csv, tmp_path, S)
    assert list(meta.users) == ["u1"] and not meta.rejected


@pytest.mark.parametrize(
    ("text", "missing"),
    [("user_id,image_path,gender\nu1,a.jpg,f\n", "age"), ("user_id,age\nu1,30\n", "gender"), ("", None)],
)
def test_missing_columns_stop_with_a_clear_error(tmp_path: Path, text: str, missing: str | None) -> None:
    csv = write(tmp_path / "m.csv", text)
    with pytest.raises(InvalidInput) as err:
        load_metadata(csv, tmp_path, S)
    assert "m.csv" in str(err.value)
    if missing:
        assert missing in str(err.value)


def test_each_bad_row_is_rejected_with_its_reason(tmp_path: Path) -> None:
    rows = [
        "u1,a.jpg,f,30,,,",  # 2 ok
        "u2,b.jpg,f,17,,,",  # 3 too young
        "u3,c.jpg,f,thirty,,,",  # 4 not an integer
        "u4,d.jpg,robot,30,,,",  # 5 gender
        "u1,a.jpg,f,30,,,",  # 6 duplicated row
        "u5,../e.jpg,f,30,,,",  # 7 climbs
        "u6,/etc/passwd,f,30,,,",  # 8 absolute
        "=cmd|' /C calc'!A0,f.jpg,f,30,,,",  # 9 formula
        "u7,g.jpg,f,30,robot,,",  # 10 seeking
        "u8,h.jpg,f,30,,50,40",  # 11 age_min > age_max
        "u1,i.jpg,m,30,,,",  # 12 conflicts with line 2
        "u9,,f,30,,,",  # 13 empty image_path
        "u 10,j.jpg,f,30,,,",  # 14 bad user id
        "u11,k.jpg,f,30,,,,extra",  # 15 too many cells
        "u12,a.jpg,f,30,,,",  # 16 same file as u1
        "u13,l.jpg,f,30.5,,,",  # 17 not an integer
        "u14,m.jpg,f,121,,,",  # 18 too old
        "u15,n.jpg,@SUM(1),30,,,",  # 19 formula in gender
    ]
    csv = write(tmp_path / "m.csv", HEADER + "\n".join(rows) + "\n")
    meta = load_metadata(csv, tmp_path, S)
    assert reasons(meta) == {
        3: Reason.INVALID_AGE,
        4: Reason.INVALID_AGE,
        5: Reason.INVALID_GENDER,
        6: Reason.DUPLICATE_ROW,
        7: Reason.OUTSIDE_PHOTOS_DIR,
        8: Reason.OUTSIDE_PHOTOS_DIR,
        9: Reason.FORMULA,
        10: Reason.INVALID_GENDER,
        11: Reason.INVALID_AGE,
        12: Reason.CONFLICTING_ROW,
        13: Reason.MISSING_FIELD,
        14: Reason.INVALID_FIELD,
        15: Reason.INVALID_FIELD,
        16: Reason.DUPLICATE_ROW,
        17: Reason.INVALID_AGE,
        18: Reason.INVALID_AGE,
        19: Reason.FORMULA,
    }
    assert list(meta.users) == ["u1"] and [p.rel_path for p in meta.photos] == ["a.jpg"]
    by_row = {r.row: r for r in meta.rejected}
    assert all(r.file == str(csv) and r.kind == "row" for r in meta.rejected)
    assert by_row[3].field == "age" and by_row[5].field == "gender" and by_row[10].field == "seeking"
    assert by_row[12].field == "gender" and "line 2" in by_row[12].detail
    # The formula is never echoed so that a spreadsheet would run it.
    assert by_row[9].user_id is not None and by_row[9].user_id.startswith("'=")


def test_non_utf8_row_is_rejected_alone(tmp_path: Path) -> None:
    csv = write(tmp_path / "m.csv", HEADER.encode() + b"u1,a.jpg,f,30,,,\nu2,caf\xe9.jpg,f,30,,,\n")
    meta = load_metadata(csv, tmp_path, S)
    assert list(meta.users) == ["u1"]
    assert reasons(meta) == {3: Reason.NOT_UTF8}
    assert meta.rejected[0].field == "image_path"
    meta.rejected[0].model_dump_json()  # serialisable: no lone surrogate left in the report


def test_gender_set_is_a_setting(tmp_path: Path) -> None:
    csv = write(tmp_path / "m.csv", "user_id,image_path,gender,age\nu1,a.jpg,nb,30\nu2,b.jpg,f,30\n")
    meta = load_metadata(csv, tmp_path, Settings(genders="female,male", progress=False))
    assert list(meta.users) == ["u2"] and reasons(meta) == {2: Reason.INVALID_GENDER}


def test_per_user_layout_lists_photo_files(tmp_path: Path, images) -> None:
    photos = tmp_path / "profiles"
    for name in ["user_001_1.jpg", "user_001_2.JPG", "user_002_1.png", "user_009_1.jpg", "readme.txt"]:
        images.good(photos / name, seed=len(name), fmt="JPEG" if "jpg" in name.lower() else "PNG")
    (photos / "sub").mkdir()
    (photos / os.fsdecode(b"user_001_3\xff.jpg")).write_bytes(b"x")
    csv = write(tmp_path / "users.csv", "user_id,gender,age\nuser_001,f,30\nuser_002,m,31\nuser_003,m,40\n")
    meta = load_metadata(csv, photos, S)
    assert meta.layout == "per_user"
    assert [(p.user_id, p.rel_path, p.row) for p in meta.photos] == [
        ("user_001", "user_001_1.jpg", None),
        ("user_001", "user_001_2.JPG", None),
        ("user_002", "user_002_1.png", None),
    ]
    assert set(meta.users) == {"user_001", "user_002", "user_003"}
    got = {r.path: r.reason for r in meta.rejected}
    assert got == {
        "readme.txt": Reason.BAD_FILE_NAME,
        "sub": Reason.NOT_A_FILE,
        "user_001_3\\xff.jpg": Reason.BAD_FILE_NAME,
        "user_009_1.jpg": Reason.NO_METADATA_ROW,
    }


def test_per_user_photos_of_a_rejected_user_are_reported(tmp_path: Path, images) -> None:
    images.good(tmp_path / "u1_1.jpg", seed=1)
    csv = write(tmp_path / "users.csv", "user_id,gender,age\nu1,f,12\n")
    meta = load_metadata(csv, tmp_path, S)
    assert [(r.kind, r.reason) for r in meta.rejected] == [
        ("row", Reason.INVALID_AGE),
        ("photo", Reason.NO_METADATA_ROW),
    ]
    assert "line 2" in meta.rejected[1].detail and not meta.photos
