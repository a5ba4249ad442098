"""Synthetic demo population: deterministic per seed, complete, consistent, identities visible in pixels."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import InvalidInput
from engine.schema import Profile
from evaluation.demo_data import LOOK_DIM, METADATA_COLUMNS, USERS_COLUMNS, make_demo_data
from matcher.cli import main


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_same_seed_gives_byte_identical_files(demo_dir: Path, tmp_path: Path) -> None:
    again = make_demo_data(tmp_path / "again", users=24, seed=7)
    first, second = _hashes(demo_dir), _hashes(again)
    assert first == second
    assert len(first) > 24 * 2  # photos in both layouts + csv + json


def test_different_seeds_differ(demo_dir: Path, tmp_path: Path) -> None:
    other = make_demo_data(tmp_path / "other", users=24, seed=8)
    a, b = _hashes(demo_dir), _hashes(other)
    assert a["truth.json"] != b["truth.json"]
    shared = set(a) & set(b)
    assert sum(a[k] == b[k] for k in shared) == 0


def test_metadata_rows_point_at_decodable_photos(demo_dir: Path) -> None:
    rows = _rows(demo_dir / "metadata.csv")
    with (demo_dir / "metadata.csv").open(encoding="utf-8") as f:
        assert tuple(next(csv.reader(f))) == METADATA_COLUMNS
    users = Counter(r["user_id"] for r in rows)
    assert len(users) == 24
    assert set(users.values()) <= {1, 2, 3, 4}
    assert sorted(users) == [f"user_{i:03d}" for i in range(1, 25)]
    for r in rows:
        assert not Path(r["image_path"]).is_absolute()
        assert r["image_path"].startswith(f"photos/{r['user_id']}/")
        with Image.open(demo_dir / r["image_path"]) as im:
            im.verify()
        assert r["gender"] in {"female", "male", "nonbinary"}
        age = int(r["age"])
        assert 18 <= age <= 60
        seeking = r["seeking"].split("|")
        assert seeking and set(seeking) <= {"female", "male", "nonbinary"}
        if r["age_min"] and r["age_max"]:
            assert int(r["age_min"]) <= age <= int(r["age_max"])
    # The photos folder holds exactly the listed files.
    on_disk = {str(p.relative_to(demo_dir)) for p in (demo_dir / "photos").rglob("*") if p.is_file()}
    assert on_disk == {r["image_path"] for r in rows}


def test_sizes_aspects_and_formats_vary(demo_dir: Path) -> None:
    rows = _rows(demo_dir / "metadata.csv")
    sizes: set[tuple[int, int]] = set()
    formats: Counter[str] = Counter()
    for r in rows:
        with Image.open(demo_dir / r["image_path"]) as im:
            sizes.add(im.size)
            formats[str(im.format)] += 1
            assert im.mode == "RGB"
            assert 160 <= min(im.size) and max(im.size) <= 640
            assert Path(r["image_path"]).suffix == {"JPEG": ".jpg", "PNG": ".png"}[str(im.format)]
    assert formats["JPEG"] > 0 and formats["PNG"] > 0
    assert len(sizes) > len(rows) // 2
    aspects = {round(w / h, 2) for w, h in sizes}
    assert len(aspects) >= 3


def test_truth_matches_metadata(demo_dir: Path) -> None:
    truth = json.loads((demo_dir / "truth.json").read_text(encoding="utf-8"))
    assert truth["version"] == 1 and truth["seed"] == 7 and truth["look_dim"] == LOOK_DIM
    rows = _rows(demo_dir / "metadata.csv")
    assert set(truth["users"]) == {r["user_id"] for r in rows}
    for r in rows:
        t = truth["users"][r["user_id"]]
        assert t["gender"] == r["gender"] and t["age"] == int(r["age"])
        assert 0.0 <= t["attractiveness"] <= 1.0
        assert len(t["looks"]) == LOOK_DIM
        assert np.linalg.norm(t["looks"]) == pytest.approx(1.0, abs=1e-5)
    attr = [t["attractiveness"] for t in truth["users"].values()]
    assert np.std(attr) > 0.05  # a spread, not a constant


def test_raw_layout_mirrors_the_photos(demo_dir: Path) -> None:
    rows = _rows(demo_dir / "metadata.csv")
    users = _rows(demo_dir / "raw" / "users.csv")
    with (demo_dir / "raw" / "users.csv").open(encoding="utf-8") as f:
        assert tuple(next(csv.reader(f))) == USERS_COLUMNS
    per_user = Counter(r["user_id"] for r in rows)
    assert {u["user_id"]: int(u["n_photos"]) for u in users} == dict(per_user)
    meta_by_user = {r["user_id"]: r for r in rows}
    for u in users:
        m = meta_by_user[u["user_id"]]
        assert (u["gender"], u["age"], u["seeking"], u["age_min"], u["age_max"]) == (
            m["gender"], m["age"], m["seeking"], m["age_min"], m["age_max"],
        )  # fmt: skip
    raw = sorted(p.name for p in (demo_dir / "raw" / "profiles").iterdir())
    expected = sorted(
        f"{r['user_id']}_{Path(r['image_path']).stem}.jpg" for r in rows
    )
    assert raw == expected
    for r in rows[:10]:
        src = demo_dir / r["image_path"]
        dst = demo_dir / "raw" / "profiles" / f"{r['user_id']}_{Path(r['image_path']).stem}.jpg"
        with Image.open(src) as a, Image.open(dst) as b:
            assert b.format == "JPEG" and a.size == b.size
            # The same photo (re-encoded as JPEG where the original is PNG): pixels agree closely.
            diff = np.abs(np.asarray(a.convert("RGB"), np.float32) - np.asarray(b.convert("RGB"), np.float32))
            assert diff.mean() < 6.0


def _colour_feature(path: Path) -> np.ndarray:
    """A 4x4x4 colour histogram of the middle of the frame (mostly face), L1-normalised."""
    with Image.open(path) as im:
        x = np.asarray(im.convert("RGB").resize((96, 96)), dtype=np.int64)[29:58, 34:62]
    bins = (x // 64).reshape(-1, 3)
    hist = np.bincount(bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2], minlength=64).astype(np.float64)
    return hist / hist.sum()


def test_photos_of_one_user_look_alike(demo_dir: Path) -> None:
    """In a plain colour-histogram feature, same-user photos are closer than different-user photos on average,
    and the nearest other photo is the same user's far more often than chance (despite pose/light changes)."""
    rows = _rows(demo_dir / "metadata.csv")
    feats = np.stack([_colour_feature(demo_dir / r["image_path"]) for r in rows])
    labels = np.array([r["user_id"] for r in rows])
    dist = np.abs(feats[:, None, :] - feats[None, :, :]).sum(-1)
    same = labels[:, None] == labels[None, :]
    other = ~np.eye(len(rows), dtype=bool)
    d_same, d_diff = dist[same & other].mean(), dist[~same].mean()
    assert d_same < 0.9 * d_diff, (d_same, d_diff)
    has_pos = (same & other).any(axis=1)
    nearest = np.where(other, dist, np.inf).argmin(axis=1)
    recall1 = (labels[nearest] == labels)[has_pos].mean()
    chance = ((same & other).sum(axis=1)[has_pos] / (len(rows) - 1)).mean()
    assert recall1 > 3 * chance, (recall1, chance)


def test_rejects_bad_arguments(tmp_path: Path, demo_dir: Path) -> None:
    with pytest.raises(InvalidInput, match="users"):
        make_demo_data(tmp_path / "x", users=0, seed=1)
    with pytest.raises(InvalidInput, match="not empty"):
        make_demo_data(demo_dir, users=2, seed=1)


def test_overwrite_replaces_previous_population(tmp_path: Path) -> None:
    out = make_demo_data(tmp_path / "d", users=6, seed=1)
    make_demo_data(out, users=3, seed=2, overwrite=True)
    rows = _rows(out / "metadata.csv")
    assert {r["user_id"] for r in rows} == {"user_001", "user_002", "user_003"}
    assert {p.name for p in (out / "photos").iterdir()} == {"user_001", "user_002", "user_003"}


def test_cli_make_demo_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["--no-progress", "make-demo-data", str(out), "--users", "5", "--seed", "3"]) == 0
    n = len(_rows(out / "metadata.csv"))
    assert f"wrote 5 users, {n} photos" in capsys.readouterr().out
    assert _hashes(out) == _hashes(make_demo_data(tmp_path / "api", users=5, seed=3))


def test_population_statistics_are_plausible() -> None:
    """Over many users (no photos drawn): mostly binary genders, a few nonbinary, young-skewed ages."""
    from evaluation.demo_data import make_user

    users = [make_user(11, i) for i in range(1, 3001)]
    g = Counter(u.gender for u in users)
    assert 0.01 < g["nonbinary"] / len(users) < 0.06
    assert abs(g["female"] - g["male"]) / len(users) < 0.08
    ages = np.array([u.age for u in users])
    assert ages.min() >= 18 and ages.max() <= 60 and np.median(ages) < 32
    binary = [u for u in users if u.gender != "nonbinary"]
    other = sum(u.seeking == (("male",) if u.gender == "female" else ("female",)) for u in binary)
    assert 0.75 < other / len(binary) < 0.95
    assert all(u.seeking == ("female", "male", "nonbinary") for u in users if u.gender == "nonbinary")
    assert any(not u.window_given[0] for u in users) and any(not u.window_given[1] for u in users)
    assert all(isinstance(u, Profile) for u in users)  # the one profile type the engine and ingestion use


def test_attractiveness_changes_the_face_not_the_scene() -> None:
    """Same user, same photo draws, only attractiveness changed: the face changes (more the larger the
    change) while the frame's border (background) stays the same pixels."""
    import dataclasses

    from evaluation.demo_data import DemoUser, make_user
    from evaluation.demo_photos import render_photo

    for i in range(1, 9):
        user = make_user(21, i)

        def photo(a: float, u: DemoUser = user, i: int = i) -> np.ndarray:
            changed = dataclasses.replace(u, attractiveness=a)
            img = render_photo(changed, np.random.default_rng([3, i]), noise=False)
            return np.asarray(img, dtype=np.float32)

        low, mid, high = photo(0.1), photo(0.7), photo(0.9)
        assert np.abs(low - high).mean() > np.abs(mid - high).mean() > 0
        border = np.ones(high.shape[:2], dtype=bool)
        border[8:-8, 8:-8] = False
        assert np.abs(low - high)[border].mean() < 0.5


def test_attractiveness_is_independent_of_looks() -> None:
    from evaluation.demo_data import make_user

    users = [make_user(13, i) for i in range(1, 2001)]
    looks = np.stack([u.looks for u in users])
    attr = np.array([u.attractiveness for u in users])
    corr = [abs(np.corrcoef(looks[:, j], attr)[0, 1]) for j in range(looks.shape[1])]
    assert max(corr) < 0.1
    assert 0.15 < attr.std() < 0.3 and attr.min() >= 0 and attr.max() <= 1


def test_blemishes_show_equally_on_every_skin_tone() -> None:
    """The attractiveness cue (skin spots) has the same brightness contrast on light and dark skin."""
    from evaluation.demo_photos import _SKIN, _interp, _spot_colour

    def luma(c: tuple[int, int, int]) -> float:
        return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]

    contrast = [abs(luma(s) - luma(_spot_colour(s))) for s in (_interp(_SKIN, t) for t in np.linspace(0, 1, 21))]
    assert min(contrast) > 30 and max(contrast) - min(contrast) < 10
