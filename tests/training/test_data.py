from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import InvalidInput
from training.data import (
    Photo,
    PhotoDataset,
    check_disjoint,
    load_image,
    read_dataset,
    read_mapping_csv,
    read_profiles_dir,
    split_by_identity,
)


def _img(path: Path, colour: tuple[int, int, int] = (120, 80, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 40), colour).save(path)
    return path


def test_profiles_layout_takes_identity_from_the_file_name(tmp_path: Path) -> None:
    profiles = tmp_path / "raw" / "profiles"
    for name in ("user_001_1.jpg", "user_001_2.jpg", "user_002_1.jpg", "notes.txt"):
        _img(profiles / name) if name.endswith(".jpg") else (profiles / name).write_text("x")
    photos = read_dataset(tmp_path)
    assert [(p.identity, p.path.name) for p in photos] == [
        ("user_001", "user_001_1.jpg"),
        ("user_001", "user_001_2.jpg"),
        ("user_002", "user_002_1.jpg"),
    ]


def test_profiles_layout_rejects_a_name_without_a_photo_number(tmp_path: Path) -> None:
    _img(tmp_path / "alice.jpg")
    with pytest.raises(InvalidInput, match=r"alice\.jpg.*<user>_<n>"):
        read_profiles_dir(tmp_path)


def test_generated_layout_reads_the_mapping_csv(tmp_path: Path) -> None:
    _img(tmp_path / "img" / "a.png")
    _img(tmp_path / "img" / "b.png")
    (tmp_path / "identities.csv").write_text("image_path,identity\nimg/a.png,id7\nimg/b.png,id7\n")
    photos = read_dataset(tmp_path)
    assert {p.identity for p in photos} == {"id7"}
    assert sorted(p.path.name for p in photos) == ["a.png", "b.png"]


def test_mapping_csv_names_the_row_of_a_missing_file(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    (tmp_path / "map.csv").write_text("image_path,identity\na.png,x\nmissing.png,y\n")
    with pytest.raises(InvalidInput, match=r"row 3.*missing\.png"):
        read_mapping_csv(tmp_path / "map.csv")


def test_mapping_csv_without_identity_column_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "map.csv").write_text("image_path,person\na.png,x\n")
    with pytest.raises(InvalidInput, match="identity"):
        read_mapping_csv(tmp_path / "map.csv")


def test_demo_layout_reads_metadata_csv(demo_dir: Path) -> None:
    photos = read_dataset(demo_dir)
    import csv

    with (demo_dir / "metadata.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(photos) == len(rows)
    assert {p.identity for p in photos} == {r["user_id"] for r in rows}
    assert all(p.path.is_file() for p in photos)
    # The raw/profiles copy of the same data gives the same people.
    raw = read_profiles_dir(demo_dir / "raw" / "profiles")
    assert {p.identity for p in raw} == {p.identity for p in photos}


def _photos(counts: dict[str, int]) -> list[Photo]:
    return [Photo(identity=i, path=Path(f"/x/{i}_{n}.jpg")) for i, c in counts.items() for n in range(c)]


def test_split_is_by_identity_and_seeded() -> None:
    counts = {f"u{i:02d}": 1 + i % 3 for i in range(30)}
    photos = _photos(counts)
    train, val = split_by_identity(photos, val_fraction=0.2, seed=3)
    assert {p.identity for p in train}.isdisjoint({p.identity for p in val})
    assert len(train) + len(val) == len(photos)
    assert len({p.identity for p in val}) == 6
    # Held-out people can be queried: each has 2+ photos.
    assert all(counts[i] >= 2 for i in {p.identity for p in val})
    assert split_by_identity(photos, val_fraction=0.2, seed=3) == (train, val)
    assert split_by_identity(photos, val_fraction=0.2, seed=4) != (train, val)
    check_disjoint(train, val)


def test_split_refuses_more_held_out_people_than_have_two_photos() -> None:
    with pytest.raises(InvalidInput, match="2\\+ photos"):
        split_by_identity(_photos({"a": 2, "b": 1, "c": 1, "d": 1}), val_identities=2)


def test_check_disjoint_names_a_shared_identity() -> None:
    with pytest.raises(InvalidInput, match="bob"):
        check_disjoint(_photos({"alice": 2, "bob": 1}), _photos({"bob": 2}))


def test_dataset_labels_and_bad_image(tmp_path: Path) -> None:
    good = _img(tmp_path / "a_1.png", (255, 0, 0))
    bad = tmp_path / "b_1.jpg"
    bad.write_bytes(b"not an image")
    ds = PhotoDataset([Photo("a", good), Photo("b", bad)])
    img, label = ds[0]
    assert img.mode == "RGB" and label == 0 and np.asarray(img)[0, 0].tolist() == [255, 0, 0]
    assert ds.counts() == {"photos": 2, "identities": 2, "identities_with_2plus_photos": 0}
    with pytest.raises(InvalidInput, match=r"b_1\.jpg"):
        load_image(bad)
