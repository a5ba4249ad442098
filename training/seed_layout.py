"""The data as the user has it: real profile photos to validate on, generated images (mapped to their source
user) to train on, never mixed.

Layout under a data root (the seed's ``data/``)::

    raw/profiles/<user>_<n>.jpg              real users' photos (identity from the file name), or
    metadata.csv                             user_id,image_path,... (one row per real photo; wins when both)
    augmented/generated/<name>.jpg           images generated from a real user's photos
    augmented/generated/mapping.csv          image_path,source_user: one row per generated image

Identity is the only label, so a generated image without a row in the mapping file is an error, never a
guess from its name (``gen_001.jpg`` would otherwise read as a person called "gen").

The split (:func:`seed_split`): validation users are drawn (seeded) among the real users with at least two
photos; validation holds only their *real* photos, training only *generated* images of the other users. A
validation user's generated images are withheld from training, so validation scores people the encoder never
saw in any form — what it meets after deployment. Real photos of training users are not used at all.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import InvalidInput
from training.data import (
    IMAGE_SUFFIXES,
    Photo,
    group_by_identity,
    read_csv_rows,
    read_metadata_csv,
    read_profiles_dir,
)

log = logging.getLogger(__name__)

GENERATED_DIR = Path("augmented") / "generated"
PROFILES_DIR = Path("raw") / "profiles"
MAPPING_NAME = "mapping.csv"
# Accepted header names, first match wins; the documented pair is image_path,source_user.
IMAGE_COLUMNS = ("image_path", "image", "file")
SOURCE_COLUMNS = ("source_user", "user_id", "identity")
SPLIT_COLUMNS = ("image_path", "identity")


@dataclass(frozen=True)
class SeedSplit:
    """Training photos (generated) and validation photos (real), with what was left out and why."""

    train: list[Photo]
    val: list[Photo]
    withheld_generated: int = 0  # generated images of validation users
    unused_real: int = 0  # real photos of users who are not validating
    counts: dict[str, int] = field(default_factory=dict)


def is_seed_root(folder: Path) -> bool:
    """Whether ``folder`` holds the seed layout (an ``augmented/generated`` folder beside the real photos)."""
    folder = Path(folder)
    return (folder / GENERATED_DIR).is_dir() and (
        (folder / PROFILES_DIR).is_dir() or (folder / "metadata.csv").is_file()
    )


def _column(header: Sequence[str], names: Sequence[str], path: Path, what: str) -> str:
    for name in names:
        if name in header:
            return name
    raise InvalidInput(f"{path}: no {what} column (one of {', '.join(names)}; header: {', '.join(header) or 'empty'})")


def find_mapping(folder: Path) -> Path:
    """The mapping file of a generated-images folder: ``mapping.csv``, else the one CSV there.

    Raises:
        InvalidInput: none, or several CSVs and no ``mapping.csv`` (which one is meant is unclear).
    """
    folder = Path(folder)
    if (folder / MAPPING_NAME).is_file():
        return folder / MAPPING_NAME
    csvs = sorted(folder.glob("*.csv"))
    if len(csvs) == 1:
        return csvs[0]
    images = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if csvs:
        raise InvalidInput(
            f"{folder}: {len(csvs)} CSV files ({', '.join(c.name for c in csvs)}) and no {MAPPING_NAME}; "
            f"name the mapping of generated images to source users {MAPPING_NAME}"
        )
    shown = ", ".join(images[:3]) + (", ..." if len(images) > 3 else "")
    raise InvalidInput(
        f"{folder}: {len(images)} generated images ({shown}) but no {MAPPING_NAME}; identity is the only "
        f"training label, so each generated image needs a row 'image_path,source_user' naming the real "
        f"user it was generated from (its file name does not say who it shows)"
    )


def read_generated(folder: Path, mapping: Path | None = None) -> list[Photo]:
    """Generated images of ``folder``, each labelled with the source user its mapping row names.

    ``image_path`` in the mapping is relative to the mapping file's folder (or absolute).

    Raises:
        InvalidInput: no mapping; a missing column or empty field, a file that does not exist, an image
            mapped twice, or an image in the folder without a row (each named with its row or file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInput(f"{folder}: not a folder")
    mapping = Path(mapping) if mapping is not None else find_mapping(folder)
    header, rows = read_csv_rows(mapping)
    image_col = _column(header, IMAGE_COLUMNS, mapping, "image")
    source_col = _column(header, SOURCE_COLUMNS, mapping, "source user")
    photos: list[Photo] = []
    seen: dict[Path, int] = {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        rel, source = row.get(image_col, ""), row.get(source_col, "")
        if not rel:
            raise InvalidInput(f"{mapping}, row {line}: empty {image_col!r}")
        if not source:
            raise InvalidInput(f"{mapping}, row {line}: empty {source_col!r} for {rel}")
        file = Path(rel) if Path(rel).is_absolute() else mapping.parent / rel
        if not file.is_file():
            raise InvalidInput(f"{mapping}, row {line}: {image_col} {rel!r} does not exist ({file})")
        key = file.resolve()
        if key in seen:
            raise InvalidInput(f"{mapping}, row {line}: {rel!r} is already mapped in row {seen[key]}")
        seen[key] = line
        photos.append(Photo(identity=source, path=file))
    if not photos:
        raise InvalidInput(f"{mapping}: no rows")
    unmapped = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and p.resolve() not in seen
    )
    if unmapped:
        shown = ", ".join(unmapped[:5]) + (", ..." if len(unmapped) > 5 else "")
        raise InvalidInput(
            f"{folder}: {len(unmapped)} images have no row in {mapping.name} ({shown}); add "
            f"'image_path,source_user' rows for them or move them out of the folder"
        )
    return sorted(photos)


def read_real(root: Path) -> list[Photo]:
    """Real users' photos of a data root: ``metadata.csv`` when present, else ``raw/profiles/``.

    Raises:
        InvalidInput: neither exists, or a row or file name is bad.
    """
    root = Path(root)
    if (root / "metadata.csv").is_file():
        return sorted(read_metadata_csv(root / "metadata.csv"))
    if (root / PROFILES_DIR).is_dir():
        return sorted(read_profiles_dir(root / PROFILES_DIR))
    raise InvalidInput(f"{root}: no metadata.csv and no {PROFILES_DIR}/ with the real users' photos")


def seed_split(
    generated: Sequence[Photo],
    real: Sequence[Photo],
    *,
    val_users: int | None = None,
    val_fraction: float = 0.3,
    seed: int = 0,
) -> SeedSplit:
    """Split into (generated images of training users, real photos of validation users).

    Args:
        val_users: exact number of real users to validate on; None: ``val_fraction`` of the real users
            with 2+ photos (at least 2).
        val_fraction: share used when ``val_users`` is None.

    Raises:
        InvalidInput: too few real users with 2+ photos, a count or fraction out of range, or no generated
            image left to train on.
    """
    real_groups = group_by_identity(real)
    multi = [user for user, photos in real_groups.items() if len(photos) >= 2]
    if val_users is None:
        if not 0.0 < val_fraction <= 1.0:
            raise InvalidInput(f"val_fraction must be in (0, 1], got {val_fraction}")
        val_users = max(2, round(val_fraction * len(multi)))
    if val_users < 2 or val_users > len(multi):
        raise InvalidInput(
            f"cannot validate on {val_users} real users: {len(real_groups)} real users, {len(multi)} with "
            f"2+ photos (a validation user needs two photos: one to query with, one to find)"
        )
    rng = np.random.default_rng(seed)
    held = {multi[i] for i in rng.permutation(len(multi))[:val_users]}
    train = sorted(p for p in generated if p.identity not in held)
    val = sorted(p for p in real if p.identity in held)
    withheld = len(generated) - len(train)
    unused = len(real) - len(val)
    train_ids = {p.identity for p in train}
    if len(train_ids) < 2:
        raise InvalidInput(
            f"{len(train_ids)} source users left to train on after holding out {val_users} validation "
            f"users (their {withheld} generated images are withheld); generated images of at least two "
            f"other users are needed"
        )
    unknown = sorted(train_ids - set(real_groups))
    if unknown:
        log.warning(
            "%d source users of generated images have no real photo (%s%s); they still train",
            len(unknown),
            ", ".join(unknown[:3]),
            ", ..." if len(unknown) > 3 else "",
        )
    per_user = Counter(p.identity for p in train)
    counts = {
        "train_generated_images": len(train),
        "train_source_users": len(train_ids),
        "train_min_images_per_user": min(per_user.values()),
        "val_real_photos": len(val),
        "val_users": len(held),
        "withheld_generated_images": withheld,
        "unused_real_photos": unused,
        "generated_users_without_real_photos": len(unknown),
    }
    log.info("seed split: %s", counts)
    return SeedSplit(train=train, val=val, withheld_generated=withheld, unused_real=unused, counts=counts)


def read_seed_layout(
    root: Path, *, val_users: int | None = None, val_fraction: float = 0.3, seed: int = 0
) -> SeedSplit:
    """Read a data root in the seed layout and split it (see the module docstring and :func:`seed_split`).

    Raises:
        InvalidInput: a missing folder or mapping, a bad row, or a split that cannot be made.
    """
    root = Path(root)
    if not (root / GENERATED_DIR).is_dir():
        raise InvalidInput(f"{root}: no {GENERATED_DIR}/ folder of generated training images")
    generated = read_generated(root / GENERATED_DIR)
    return seed_split(generated, read_real(root), val_users=val_users, val_fraction=val_fraction, seed=seed)


def write_split(split: SeedSplit, out_dir: Path) -> tuple[Path, Path]:
    """Write ``train.csv`` and ``val.csv`` (``image_path,identity``, absolute paths) into ``out_dir``.

    They are what :func:`training.loop.train` reads as its training and validation sources, and a record of
    exactly which images each side held. Returns (train_csv, val_csv).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, photos in (("train.csv", split.train), ("val.csv", split.val)):
        path = out / name
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(SPLIT_COLUMNS)
            writer.writerows((str(p.path.resolve()), p.identity) for p in photos)
        tmp.replace(path)
        paths.append(path)
    return paths[0], paths[1]


def _record(split: SeedSplit, out_dir: Path, sources: dict[str, object]) -> tuple[Path, Path]:
    import json

    train_csv, val_csv = write_split(split, out_dir)
    record = {**sources, **split.counts}
    (Path(out_dir) / "seed_split.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return train_csv, val_csv


def prepare_seed_sources(
    root: Path, out_dir: Path, *, val_users: int | None = None, val_fraction: float = 0.3, seed: int = 0
) -> tuple[Path, Path, SeedSplit]:
    """Read and split a seed-layout data root, and write the split into ``out_dir`` as the run's sources.

    Writes ``train.csv``, ``val.csv`` (see :func:`write_split`) and ``seed_split.json`` (the counts: images
    per side, withheld and unused ones). Returns (train_csv, val_csv, split).

    Raises:
        InvalidInput: see :func:`read_seed_layout`.
    """
    split = read_seed_layout(root, val_users=val_users, val_fraction=val_fraction, seed=seed)
    train_csv, val_csv = _record(split, out_dir, {"root": str(Path(root)), "seed": seed})
    return train_csv, val_csv, split


def is_generated_dir(folder: Path) -> bool:
    """Whether ``folder`` is a generated-images folder (holds a ``mapping.csv``)."""
    return Path(folder).is_dir() and (Path(folder) / MAPPING_NAME).is_file()


def resolve_sources(
    data: Sequence[Path],
    val_data: Sequence[Path],
    out_dir: Path,
    *,
    val_users: int | None,
    val_fraction: float,
    seed: int,
) -> tuple[list[Path], list[Path]]:
    """The training and validation sources a run reads, with the seed layout's split applied where it fits.

    - one seed-layout root and no validation sources: :func:`prepare_seed_sources` on it;
    - generated-images folders (or seed roots, which stand for their ``augmented/generated``) as training
      data and real photos as validation data (SageMaker's ``train`` and ``validation`` channels):
      :func:`seed_split` of the two, so a validation user's generated images are withheld from training;
    - anything else: the sources as given (:func:`training.loop.train` reads and splits them); generated
      images split that way validate on held-out generated people, which is logged as a warning.

    Returns (data, val_data); the split, when made, is written into ``out_dir`` (``train.csv``, ``val.csv``,
    ``seed_split.json``).

    Raises:
        InvalidInput: see :func:`read_seed_layout` and :func:`seed_split`.
    """
    data, val = [Path(d) for d in data], [Path(v) for v in val_data]
    if len(data) == 1 and not val and is_seed_root(data[0]):
        train_csv, val_csv, _ = prepare_seed_sources(
            data[0], out_dir, val_users=val_users, val_fraction=val_fraction, seed=seed
        )
        return [train_csv], [val_csv]
    if val:
        # A seed root beside separate validation photos trains on its generated images only, never on the
        # real photos it also holds.
        data = [d / GENERATED_DIR if is_seed_root(d) else d for d in data]
    if data and val and all(is_generated_dir(d) for d in data):
        from training.data import read_dataset

        generated = sorted({p for d in data for p in read_generated(d)})
        real = sorted({p for v in val for p in read_dataset(v)})
        split = seed_split(generated, real, val_users=val_users, val_fraction=val_fraction, seed=seed)
        train_csv, val_csv = _record(
            split, out_dir, {"generated": [str(d) for d in data], "real": [str(v) for v in val], "seed": seed}
        )
        return [train_csv], [val_csv]
    if not val and any(is_generated_dir(d) for d in data):
        log.warning(
            "training on generated images with no real photos given: validation will hold out "
            "generated images of some source users, not real photos"
        )
    return data, val
