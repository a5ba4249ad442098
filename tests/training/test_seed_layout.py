from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from engine.errors import InvalidInput
from training.data import Photo, read_dataset
from training.seed_layout import (
    is_seed_root,
    prepare_seed_sources,
    read_generated,
    read_seed_layout,
    seed_split,
)


def _img(path: Path, colour: tuple[int, int, int] = (120, 80, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 40), colour).save(path)
    return path


def _seed_root(root: Path, real: dict[str, int], generated: dict[str, int], mapping: bool = True) -> Path:
    """raw/profiles/<user>_<n>.jpg per ``real`` count; augmented/generated/gen_NNN.jpg per ``generated``."""
    for user, count in real.items():
        for n in range(1, count + 1):
            _img(root / "raw" / "profiles" / f"{user}_{n}.jpg")
    gen = root / "augmented" / "generated"
    gen.mkdir(parents=True, exist_ok=True)
    rows, i = [], 0
    for user, count in generated.items():
        for _ in range(count):
            i += 1
            _img(gen / f"gen_{i:03d}.jpg", (i % 255, 10, 10))
            rows.append((f"gen_{i:03d}.jpg", user))
    if mapping:
        with (gen / "mapping.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image_path", "source_user"])
            writer.writerows(rows)
    return root


def test_generated_images_take_their_identity_from_the_mapping_not_the_name(tmp_path: Path) -> None:
    root = _seed_root(tmp_path, {}, {"user_001": 2, "user_002": 3})
    photos = read_generated(root / "augmented" / "generated")
    assert [(p.identity, p.path.name) for p in photos] == [
        ("user_001", "gen_001.jpg"),
        ("user_001", "gen_002.jpg"),
        ("user_002", "gen_003.jpg"),
        ("user_002", "gen_004.jpg"),
        ("user_002", "gen_005.jpg"),
    ]
    # read_dataset on the folder reads the same mapping.
    assert read_dataset(root / "augmented" / "generated") == photos


def test_generated_folder_without_mapping_is_an_error_not_one_person_named_gen(tmp_path: Path) -> None:
    gen = _seed_root(tmp_path, {}, {"user_001": 2, "user_002": 2}, mapping=False) / "augmented" / "generated"
    with pytest.raises(InvalidInput, match=r"gen_001\.jpg: a generated image.*mapping\.csv"):
        read_dataset(gen)
    # Any other one-prefix folder (img_001.jpg, img_002.jpg, ...) is refused as one person too.
    for i in range(1, 4):
        _img(tmp_path / "other" / f"img_{i:03d}.jpg")
    with pytest.raises(InvalidInput, match=r"all 3 images read as one person 'img'.*mapping"):
        read_dataset(tmp_path / "other")
    with pytest.raises(InvalidInput, match=r"4 generated images \(gen_001\.jpg.*no mapping\.csv.*source_user"):
        read_generated(gen)


def test_a_generated_image_without_a_mapping_row_is_named(tmp_path: Path) -> None:
    gen = _seed_root(tmp_path, {}, {"user_001": 2}) / "augmented" / "generated"
    _img(gen / "gen_099.jpg")
    with pytest.raises(InvalidInput, match=r"1 images have no row in mapping\.csv \(gen_099\.jpg\)"):
        read_generated(gen)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("image_path,source_user\ngen_001.jpg,user_001\nmissing.jpg,user_001\n", r"row 3.*missing\.jpg"),
        ("image_path,source_user\ngen_001.jpg,user_001\ngen_001.jpg,user_002\n", r"row 3.*already mapped in row 2"),
        ("image_path,source_user\ngen_001.jpg,\n", r"row 2: empty 'source_user'"),
        ("image_path,person\ngen_001.jpg,user_001\n", r"no source user column"),
    ],
)
def test_bad_mapping_rows_are_named(tmp_path: Path, rows: str, message: str) -> None:
    gen = tmp_path / "generated"
    _img(gen / "gen_001.jpg")
    (gen / "mapping.csv").write_text(rows)
    with pytest.raises(InvalidInput, match=message):
        read_generated(gen)


def test_real_users_validate_generated_images_train_and_never_mix(tmp_path: Path) -> None:
    real = {f"user_{i:03d}": 1 + i % 3 for i in range(1, 13)}  # 8 users with 2+ photos
    generated = {f"user_{i:03d}": 3 for i in range(1, 15)}  # two source users have no real photo
    root = _seed_root(tmp_path / "data", real, generated)
    assert is_seed_root(root)
    split = read_seed_layout(root, val_users=4, seed=1)
    val_users = {p.identity for p in split.val}
    train_users = {p.identity for p in split.train}
    assert len(val_users) == 4 and all(real[u] >= 2 for u in val_users)
    assert val_users.isdisjoint(train_users)
    assert all("generated" in p.path.parts for p in split.train)
    assert all("profiles" in p.path.parts for p in split.val)
    assert len(split.val) == sum(real[u] for u in val_users)
    assert split.withheld_generated == 4 * 3 and len(split.train) == 14 * 3 - 12
    assert split.counts["generated_users_without_real_photos"] == 2
    assert split.unused_real == sum(real.values()) - len(split.val)
    # Seeded: the same seed gives the same split, another seed another one.
    assert read_seed_layout(root, val_users=4, seed=1) == split
    assert {p.identity for p in read_seed_layout(root, val_users=4, seed=2).val} != val_users


def test_split_files_are_what_training_reads(tmp_path: Path) -> None:
    real = {f"user_{i:03d}": 2 for i in range(1, 7)}
    root = _seed_root(tmp_path / "data", real, {u: 2 for u in real})
    train_csv, val_csv, split = prepare_seed_sources(root, tmp_path / "run", val_users=2, seed=0)
    assert read_dataset(train_csv) == [Photo(p.identity, p.path.resolve()) for p in split.train]
    assert read_dataset(val_csv) == [Photo(p.identity, p.path.resolve()) for p in split.val]
    record = json.loads((tmp_path / "run" / "seed_split.json").read_text())
    assert record["val_users"] == 2 and record["train_generated_images"] == 8


def test_split_refuses_what_cannot_be_validated_or_trained(tmp_path: Path) -> None:
    one_photo = _seed_root(tmp_path / "a", {"user_001": 1, "user_002": 1, "user_003": 2}, {"user_004": 2})
    with pytest.raises(InvalidInput, match=r"3 real users, 1 with 2\+ photos"):
        read_seed_layout(one_photo, val_users=2)
    # Every source user validates: nothing is left to train on.
    same = {"user_001": 2, "user_002": 2}
    with pytest.raises(InvalidInput, match=r"0 source users left to train on.*4 generated images are withheld"):
        seed_split(
            read_generated(_seed_root(tmp_path / "b", same, same) / "augmented" / "generated"),
            read_dataset(tmp_path / "b" / "raw" / "profiles"),
            val_users=2,
        )


@pytest.fixture(scope="module")
def seed_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed layout over a 30-person synthetic population, 3 generated images per person."""
    from evaluation.seed_data import make_seed_data

    return make_seed_data(tmp_path_factory.mktemp("seed") / "data", users=30, generated_per_user=3, seed=7)


def test_matcher_train_on_the_seed_root_trains_on_generated_and_validates_on_real(
    seed_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from matcher.cli import main

    out = tmp_path / "run"
    code = main(
        [
            "--no-progress",
            "train",
            str(seed_data),
            "--out",
            str(out),
            "--base",
            "tiny",
            "--epochs",
            "1",
            "--pixel-budget",
            str(64 * 64),
            "--dim",
            "16",
            "--p",
            "6",
            "--k",
            "2",
            "--cache-views",
            "2",
            "--val-identities",
            "5",
        ]
    )
    assert code == 0
    assert "training on 75 generated images of 25 users, validating on" in capsys.readouterr().out
    record = json.loads((out / "seed_split.json").read_text())
    card = json.loads((out / "encoder_card.json").read_text())
    train_rows = list(csv.DictReader((out / "train.csv").open()))
    val_rows = list(csv.DictReader((out / "val.csv").open()))
    assert all("/augmented/generated/gen_" in r["image_path"] for r in train_rows)
    assert all("/augmented/" not in r["image_path"] for r in val_rows)
    assert {r["identity"] for r in train_rows}.isdisjoint({r["identity"] for r in val_rows})
    assert record["val_users"] == 5 == card["data"]["val"]["identities"]
    assert record["train_generated_images"] == card["data"]["train"]["photos"] == (30 - 5) * 3
    assert record["withheld_generated_images"] == 5 * 3
    assert card["data"]["sources"] == [str(out / "train.csv")]


def test_sagemaker_style_channels_split_the_same_way(tmp_path: Path) -> None:
    """train = the generated folder (or the whole root), validation = the real photos: the generated images
    of validation users are withheld, and a root's real photos never train."""
    from training.seed_layout import resolve_sources

    real = {f"user_{i:03d}": 2 for i in range(1, 9)}
    root = _seed_root(tmp_path / "data", real, {u: 3 for u in real})
    profiles = root / "raw" / "profiles"
    for train_source in (root / "augmented" / "generated", root):
        out = tmp_path / f"run-{train_source.name}"
        data, val = resolve_sources([train_source], [profiles], out, val_users=3, val_fraction=0.2, seed=0)
        assert (data, val) == ([out / "train.csv"], [out / "val.csv"])
        train_photos, val_photos = read_dataset(data[0]), read_dataset(val[0])
        assert all("generated" in p.path.parts for p in train_photos)
        assert all("profiles" in p.path.parts for p in val_photos)
        assert len({p.identity for p in val_photos}) == 3 and len(train_photos) == (8 - 3) * 3


def test_real_users_can_come_from_metadata_csv(tmp_path: Path) -> None:
    """A root with metadata.csv (user_id,image_path,...) and no raw/profiles is a seed root too."""
    root = tmp_path / "data"
    rows = ["user_id,image_path,gender,age"]
    for i in range(1, 6):
        for n in (1, 2):
            _img(root / "photos" / f"u{i}" / f"{n}.jpg")
            rows.append(f"u{i},photos/u{i}/{n}.jpg,f,30")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    _seed_root(root, {}, {f"u{i}": 2 for i in range(1, 6)})
    assert is_seed_root(root)
    split = read_seed_layout(root, val_users=2, seed=0)
    assert {p.identity for p in split.val} <= {f"u{i}" for i in range(1, 6)}
    assert all("photos" in p.path.parts for p in split.val) and len(split.val) == 4
    assert len(split.train) == 3 * 2


def test_a_generated_image_among_real_profiles_is_refused(tmp_path: Path) -> None:
    profiles = tmp_path / "raw" / "profiles"
    for name in ("user_001_1.jpg", "user_001_2.jpg", "gen_001.jpg"):
        _img(profiles / name)
    with pytest.raises(InvalidInput, match=r"gen_001\.jpg: a generated image.*mapping\.csv"):
        read_dataset(tmp_path)
