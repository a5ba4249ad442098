"""The photo folder beside the metadata: which files the rows name, which they do not.

``scan_per_photo`` matches listed names to the files on disk and reports every image file no row names;
``scan_per_user`` lists the ``<user_id>_<n>.<ext>`` files of the per-user layout. Both add ``Rejection``s to the
``Metadata`` they are handed, never raise for a single file.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from dataclasses import replace
from pathlib import Path, PurePosixPath

from engine.errors import InvalidInput
from ingestion.records import USER_ID_RE, Metadata, PhotoRef, has_surrogates, posix_key
from ingestion.report import Reason, Rejection

log = logging.getLogger(__name__)

# <user_id>_<n>.<ext>; user ids may contain '_' themselves, so the last '_' splits.
PER_USER_FILE_RE = re.compile(
    r"^(?P<user>.+)_(?P<n>\d{1,6})\.(?P<ext>jpe?g|png|webp|gif|bmp|tiff?)$", re.IGNORECASE
)
# Files the unlisted-photo scan counts as photos (what a phone or a camera writes, accepted by us or not).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)


def scan_per_photo(meta: Metadata, photos_dir: Path, named: set[str]) -> None:
    """Match names to the files on disk: a listed name that differs from its file only by Unicode
    normalisation (NFD vs NFC) is read under the file's own name, and every photo file that no row names
    is reported (``unlisted_file``), so a forgotten row never goes unnoticed.

    The scan covers the folder that holds the listed photos' folders (their grandparent, the deepest one
    common to all): PHOTOS_DIR itself when photos sit in per-user folders at its top level (``u1/1.jpg``) or
    at its top level; ``photos/`` in the demo (``photos/<user>/<n>.jpg``), whose ``raw/`` holds the other
    layout's copies. So a user whose row was forgotten, whose folder sits beside the others, is found.
    Hidden files and folders (``.name``) are skipped; symlinked folders are not entered.
    """
    if not named or not photos_dir.is_dir():
        return
    common = os.path.commonprefix([PurePosixPath(p).parts[:-2] for p in named])
    base = photos_dir.joinpath(*common)
    on_disk: dict[str, list[str]] = {}  # NFC key -> the names on disk with that key
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(photos_dir).as_posix()
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue
            rel = fname if rel_dir == "." else f"{rel_dir}/{fname}"
            on_disk.setdefault(unicodedata.normalize("NFC", rel), []).append(rel)
    exact = {rel for rels in on_disk.values() for rel in rels}
    for i, ref in enumerate(meta.photos):
        if ref.rel_path in exact:
            continue
        found = on_disk.get(posix_key(ref.rel_path), [])
        if len(found) == 1:  # two files differing only by normalisation: only the exact name is taken
            log.info("line %s: %r read as %r (same name, other Unicode normalisation)", ref.row, ref.rel_path, found[0])
            meta.photos[i] = replace(ref, rel_path=found[0])
    for key, rels in sorted(on_disk.items()):
        if key in named:
            continue
        for rel in rels:
            if os.path.splitext(rel)[1].lower() not in IMAGE_SUFFIXES:
                continue
            meta.rejected.append(
                Rejection(
                    kind="photo",
                    reason=Reason.UNLISTED_FILE,
                    detail=f"{rel!r}: no metadata row names this file, so it was not ingested; add a row for it "
                    "or move it out of PHOTOS_DIR",
                    path=rel,
                )
            )


def scan_per_user(meta: Metadata, photos_dir: Path, csv_path: Path, rejected_users: dict[str, int]) -> None:
    """List ``<user_id>_<n>.<ext>`` at the top level of ``photos_dir``; every other entry is reported."""
    if not photos_dir.is_dir():
        raise InvalidInput(f"{photos_dir}: PHOTOS_DIR is not a folder")
    csv_real = os.path.realpath(csv_path)
    found: list[tuple[str, int, str]] = []
    with os.scandir(photos_dir) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        name = entry.name
        if os.path.realpath(entry.path) == csv_real and not entry.is_symlink():
            continue
        if has_surrogates(name):
            meta.rejected.append(
                Rejection(
                    kind="photo",
                    reason=Reason.BAD_FILE_NAME,
                    detail="file name is not valid UTF-8",
                    path=name,
                )
            )
            continue
        if entry.is_dir(follow_symlinks=False):
            meta.rejected.append(
                Rejection(
                    kind="photo",
                    reason=Reason.NOT_A_FILE,
                    detail=f"{name!r} is a folder; the per-user layout reads only PHOTOS_DIR's top level",
                    path=name,
                )
            )
            continue
        m = PER_USER_FILE_RE.match(name)
        if m is None or not USER_ID_RE.match(m["user"]):
            meta.rejected.append(
                Rejection(
                    kind="photo",
                    reason=Reason.BAD_FILE_NAME,
                    detail=f"{name!r} is not named <user_id>_<n>.<jpg|png|webp|gif|bmp|tif>",
                    path=name,
                )
            )
            continue
        found.append((m["user"], int(m["n"]), name))
    for uid, _, name in sorted(found):
        if uid not in meta.users:
            line = rejected_users.get(uid)
            detail = (
                f"user {uid}'s metadata row (line {line}) was rejected"
                if line is not None
                else f"no metadata row for user {uid}"
            )
            meta.rejected.append(
                Rejection(kind="photo", reason=Reason.NO_METADATA_ROW, detail=detail, path=name, user_id=uid)
            )
            continue
        meta.photos.append(PhotoRef(user_id=uid, rel_path=name, row=None))
