"""The metadata's records (a user's validated profile, a photo to read, the parse's result) and the name rules
that the CSV parser (``ingestion.metadata``) and the photo-folder scans (``ingestion.photo_scan``) both apply."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

from engine.schema import Profile
from ingestion.report import Rejection

# Letters, digits and a few separators; starting with a letter or digit, so no id can be a formula.
USER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$")


@dataclass(frozen=True)
class UserRecord(Profile):
    """A user's validated metadata: their profile (``seeking`` sorted) and the line that defined it."""

    row: int  # line of the (first) row that defined it


@dataclass(frozen=True)
class PhotoRef:
    """One photo to read: ``rel_path`` is POSIX, relative to PHOTOS_DIR; ``row`` None in per_user layout."""

    user_id: str
    rel_path: str
    row: int | None


@dataclass
class Metadata:
    file: str
    layout: Literal["per_photo", "per_user"]
    layout_reason: str = ""  # which layout was chosen and why, for the report and the terminal
    users: dict[str, UserRecord] = field(default_factory=dict)
    photos: list[PhotoRef] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    # Line accounting: lines == 1 (header) + blank_lines + rows_accepted + rows rejected, always.
    lines: int = 0
    blank_lines: int = 0
    rows_accepted: int = 0


def posix_key(rel: str) -> str:
    """``rel`` as compared with names on disk: POSIX separators, Unicode NFC (a name typed on one system and
    saved by another can be NFD, and the two print alike)."""
    return unicodedata.normalize("NFC", PurePosixPath(rel.replace("\\", "/")).as_posix())


def has_surrogates(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)
