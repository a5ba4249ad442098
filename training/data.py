"""Training data: read photo/identity pairs from the layouts we receive, split them by identity, load them.

Three layouts, all reduced to a list of :class:`Photo` (a file and the identity of the person in it):

- ``metadata.csv`` with ``user_id,image_path,...`` (what ``matcher make-demo-data`` and ingestion use);
- a generated folder with a mapping CSV whose header has ``image_path`` and ``identity``;
- ``raw/profiles/<user>_<n>.jpg`` (the data plan's real users; identity from the file name).

Identities are the only labels. The split is by identity, never by photo, so nobody is in both sets.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.errors import InvalidInput
from training.images import load_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
# "<user>_<n>.jpg": the user id may itself contain underscores (user_001_2.jpg -> user_001).
_PROFILE_NAME = re.compile(r"^(?P<identity>.+)_(?P<n>\d+)$")
# Names the seed gives generated images (gen_001.jpg): never read as a person's id.
GENERATED_PREFIXES = frozenset({"gen", "generated"})


@dataclass(frozen=True, order=True)
class Photo:
    """One photo file and the identity (person) it shows."""

    identity: str
    path: Path


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV's stripped header and rows (BOM tolerated); an unreadable file is ``InvalidInput`` naming it."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput(f"{path}: cannot read CSV: {exc}") from exc
    return header, rows


def _photos_from_csv(path: Path, identity_field: str) -> list[Photo]:
    """Rows of a CSV with ``image_path`` (relative to the CSV's folder, or absolute) and an identity column.

    Raises:
        InvalidInput: a missing column, an empty field or a file that does not exist (named with its row).
    """
    header, rows = read_csv_rows(path)
    for field in ("image_path", identity_field):
        if field not in header:
            raise InvalidInput(f"{path}: no {field!r} column (header: {', '.join(header) or 'empty'})")
    photos: list[Photo] = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        identity, rel = row.get(identity_field, ""), row.get("image_path", "")
        if not identity:
            raise InvalidInput(f"{path}, row {line}: empty {identity_field!r}")
        if not rel:
            raise InvalidInput(f"{path}, row {line}: empty 'image_path'")
        file = Path(rel) if Path(rel).is_absolute() else path.parent / rel
        if not file.is_file():
            raise InvalidInput(f"{path}, row {line}: image_path {rel!r} does not exist ({file})")
        photos.append(Photo(identity=identity, path=file))
    if not photos:
        raise InvalidInput(f"{path}: no rows")
    return photos


def read_metadata_csv(path: Path) -> list[Photo]:
    """Photos of a ``metadata.csv`` (``user_id,image_path,...``; one row per photo).

    Raises:
        InvalidInput: see :func:`_photos_from_csv`.
    """
    return _photos_from_csv(Path(path), "user_id")


def read_mapping_csv(path: Path) -> list[Photo]:
    """Photos of a generated folder's mapping CSV (``image_path,identity``).

    Raises:
        InvalidInput: see :func:`_photos_from_csv`.
    """
    return _photos_from_csv(Path(path), "identity")


def read_profiles_dir(folder: Path) -> list[Photo]:
    """Photos named ``<user>_<n>.<ext>`` in ``folder`` (the data plan's ``raw/profiles``).

    Raises:
        InvalidInput: the folder is missing, holds no image, or an image name lacks the ``_<n>`` suffix.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInput(f"{folder}: not a folder")
    photos: list[Photo] = []
    for file in sorted(folder.iterdir()):
        if file.suffix.lower() not in IMAGE_SUFFIXES or not file.is_file():
            continue
        match = _PROFILE_NAME.match(file.stem)
        if match is None:
            raise InvalidInput(f"{file}: name is not '<user>_<n>{file.suffix}', so its identity is unknown")
        if match["identity"].lower() in GENERATED_PREFIXES:
            # gen_001.jpg is the seed's name for a generated image, not photo 1 of a person called "gen".
            raise InvalidInput(
                f"{file}: a generated image's name says nothing about whose photos it was made from; keep "
                f"generated images in augmented/generated/ with a mapping.csv (image_path,source_user)"
            )
        photos.append(Photo(identity=match["identity"], path=file))
    if not photos:
        raise InvalidInput(f"{folder}: no images named <user>_<n>.jpg")
    return photos


def _find_mapping_csv(folder: Path) -> Path | None:
    for candidate in sorted(folder.glob("*.csv")):
        try:
            with candidate.open(newline="", encoding="utf-8-sig") as fh:
                header = next(csv.reader(fh), [])
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
        names = {h.strip() for h in header}
        if {"image_path", "identity"} <= names:
            return candidate
    return None


def read_dataset(source: Path) -> list[Photo]:
    """Photos of a data folder in any known layout, or of a CSV file given directly.

    Looked for in order: ``metadata.csv`` (user_id,image_path), a CSV with ``image_path`` and ``identity``,
    a ``mapping.csv`` of generated images (``image_path,source_user``; see :mod:`training.seed_layout`),
    ``raw/profiles/``, ``profiles/``, then ``<user>_<n>.jpg`` files in the folder itself. Identities read
    from file names that all give one person (``gen_001.jpg`` -> "gen") are refused, not trained on.

    Returns:
        Photos sorted by (identity, path), so that every later random choice depends only on the seed.

    Raises:
        InvalidInput: nothing readable is found, or a file or row is bad.
    """
    source = Path(source)
    from_names = False  # identities parsed from file names rather than read from a CSV
    if source.is_file():
        header, _ = read_csv_rows(source)
        photos = read_metadata_csv(source) if "user_id" in header else read_mapping_csv(source)
    elif not source.is_dir():
        raise InvalidInput(f"{source}: no such folder")
    elif (source / "metadata.csv").is_file():
        photos = read_metadata_csv(source / "metadata.csv")
    elif (mapping := _find_mapping_csv(source)) is not None:
        photos = read_mapping_csv(mapping)
    elif (source / "mapping.csv").is_file():
        # A generated-images folder (image_path,source_user); imported here: seed_layout builds on this module.
        from training.seed_layout import read_generated

        photos = read_generated(source, source / "mapping.csv")
    elif (source / "raw" / "profiles").is_dir():
        photos, from_names = read_profiles_dir(source / "raw" / "profiles"), True
    elif (source / "profiles").is_dir():
        photos, from_names = read_profiles_dir(source / "profiles"), True
    else:
        from_names = True
        has_images = any(f.suffix.lower() in IMAGE_SUFFIXES for f in source.iterdir() if f.is_file())
        try:
            photos = read_profiles_dir(source)
        except InvalidInput as exc:
            if has_images:
                raise  # it names the image whose name gives no identity
            raise InvalidInput(
                f"{source}: no metadata.csv, no CSV with image_path,identity, no raw/profiles/ and no "
                f"<user>_<n>.jpg files"
            ) from exc
    photos = sorted(set(photos))
    identities = {p.identity for p in photos}
    if from_names and len(identities) == 1 and len(photos) > 2:
        # Names like gen_001.jpg parse as "<user>_<n>" with user "gen": one person, which is never meant.
        raise InvalidInput(
            f"{source}: all {len(photos)} images read as one person {next(iter(identities))!r} (from names "
            f"like {photos[0].path.name}); generated images need a mapping file with image_path,identity "
            f"(or image_path,source_user in augmented/generated/mapping.csv) naming whose photos each "
            f"was generated from"
        )
    log.info("%s: %d photos of %d identities", source, len(photos), len(identities))
    return photos


def group_by_identity(photos: Iterable[Photo]) -> dict[str, list[Photo]]:
    """Photos per identity, identities and photos sorted."""
    groups: dict[str, list[Photo]] = defaultdict(list)
    for photo in photos:
        groups[photo.identity].append(photo)
    return {k: sorted(groups[k]) for k in sorted(groups)}


def split_by_identity(
    photos: Sequence[Photo], *, val_fraction: float = 0.2, val_identities: int | None = None, seed: int = 0
) -> tuple[list[Photo], list[Photo]]:
    """Split photos into (train, validation) by identity: every person lands wholly in one of the two.

    Validation identities are drawn (seeded) among those with at least two photos, since a person with one
    photo cannot be a query for "another photo of the same person"; one-photo people stay in training,
    where they still serve as negatives.

    Args:
        val_fraction: share of all identities to hold out, used when ``val_identities`` is None.
        val_identities: exact number of identities to hold out.

    Raises:
        InvalidInput: the fraction or count is out of range, or too few people have two photos.
    """
    groups = group_by_identity(photos)
    if val_identities is None:
        if not 0.0 < val_fraction < 1.0:
            raise InvalidInput(f"val_fraction must be in (0, 1), got {val_fraction}")
        val_identities = max(2, round(val_fraction * len(groups)))
    multi = [identity for identity, group in groups.items() if len(group) >= 2]
    if val_identities < 2 or val_identities > len(multi) or val_identities >= len(groups):
        raise InvalidInput(
            f"cannot hold out {val_identities} identities: {len(groups)} identities, "
            f"{len(multi)} with 2+ photos (need at least 2 held out and 1 left for training)"
        )
    rng = np.random.default_rng(seed)
    held = {multi[i] for i in rng.permutation(len(multi))[:val_identities]}
    train = [p for identity, group in groups.items() if identity not in held for p in group]
    val = [p for identity, group in groups.items() if identity in held for p in group]
    return train, val


def check_disjoint(train: Sequence[Photo], val: Sequence[Photo]) -> None:
    """Raise if a person is in both sets (the validation figures would be inflated).

    Raises:
        InvalidInput: naming up to five shared identities.
    """
    shared = sorted({p.identity for p in train} & {p.identity for p in val})
    if shared:
        raise InvalidInput(
            f"{len(shared)} identities are in both training and validation data: {', '.join(shared[:5])}"
        )


class PhotoDataset:
    """Indexable photos with integer labels; item ``i`` is (image, label), optionally augmented.

    ``transform(image, index)`` receives the item's index so that augmentations can be seeded per item.
    """

    def __init__(
        self, photos: Sequence[Photo], transform: Callable[[Image.Image, int], Image.Image] | None = None
    ) -> None:
        if not photos:
            raise InvalidInput("no photos to train or validate on")
        self.photos = list(photos)
        self.identities: list[str] = sorted({p.identity for p in self.photos})
        index = {identity: i for i, identity in enumerate(self.identities)}
        self.labels = np.array([index[p.identity] for p in self.photos], dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        img = load_image(self.photos[i].path)
        if self.transform is not None:
            img = self.transform(img, i)
        return img, int(self.labels[i])

    def counts(self) -> dict[str, int]:
        """Photos, identities and identities with 2+ photos (for the model card)."""
        per = np.bincount(self.labels, minlength=len(self.identities))
        return {
            "photos": len(self.photos),
            "identities": len(self.identities),
            "identities_with_2plus_photos": int((per >= 2).sum()),
        }
