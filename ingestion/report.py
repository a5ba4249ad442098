"""The run report of one ingestion: counts, time per stage, and every rejected file or row with its reason.

Written as JSON at ``--report``. Every string that echoes outside input (a path, a user id, a detail) is
made safe to open in a spreadsheet first: a value starting with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return is prefixed with ``'`` (OWASP's CSV-injection advice), bytes that are not UTF-8 are
shown as ``\\xNN`` escapes and control characters as ``\\uNNNN``, so a report never carries a runnable
formula or a raw byte.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

REPORT_VERSION = 1

# Characters that make a spreadsheet read a cell as a formula (or, for tab/CR, split it into one).
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def safe_text(value: str) -> str:
    """``value`` made safe to show: no lone surrogates (non-UTF-8 bytes), no control characters, no formula.

    >>> safe_text("=cmd|' /C calc'!A0")
    "'=cmd|' /C calc'!A0"
    """
    # os.fsdecode gives lone surrogates for bytes that are not UTF-8; show them as \xNN instead.
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if text.startswith(_FORMULA_PREFIXES):
        text = "'" + text
    return "".join(ch if ch.isprintable() or ch == " " else f"\\u{ord(ch):04x}" for ch in text)


class Reason(StrEnum):
    """Why a file or a row was rejected (stable codes, for dashboards and tests)."""

    # photo files
    NOT_AN_IMAGE = "not_an_image"  # unreadable, not an image, or a format we do not take
    TRUNCATED = "truncated"
    ZERO_BYTES = "zero_bytes"
    TOO_LARGE = "too_large"  # file bytes or pixel count over the limit (decompression-bomb guard)
    TOO_SMALL = "too_small"  # a side under images.min_side
    OUTSIDE_PHOTOS_DIR = "outside_photos_dir"  # absolute, '..', or a symlink whose target is outside
    NOT_A_FILE = "not_a_file"  # a folder, FIFO, device ...
    MISSING_FILE = "missing_file"
    BAD_FILE_NAME = "bad_file_name"  # not <user_id>_<n>.<ext> (per-user layout) or not UTF-8
    DUPLICATE_PHOTO = "duplicate_photo"  # same bytes as another photo of the same user
    NO_METADATA_ROW = "no_metadata_row"
    UNLISTED_FILE = "unlisted_file"  # a photo file under PHOTOS_DIR that no metadata row names (not ingested)
    ENCODER_REFUSED = "encoder_refused"  # decoded, but the encoder's preprocessing cannot take it
    # metadata rows
    INVALID_AGE = "invalid_age"
    INVALID_GENDER = "invalid_gender"
    INVALID_FIELD = "invalid_field"  # user_id, seeking, age_min/age_max, image_path
    MISSING_FIELD = "missing_field"
    FORMULA = "formula"  # a cell a spreadsheet would run
    NOT_UTF8 = "not_utf8"
    DUPLICATE_ROW = "duplicate_row"
    CONFLICTING_ROW = "conflicting_row"  # same user, other gender/age/... than an earlier row
    STRAY_QUOTE = "stray_quote"  # a quote not closed on its line: the field would swallow the lines after it


class Rejection(BaseModel):
    """One rejected photo file or metadata row."""

    kind: Literal["photo", "row"]
    reason: Reason
    detail: str = Field(description="Human-readable explanation, naming the field where there is one.")
    path: str | None = Field(default=None, description="Photo path relative to PHOTOS_DIR, as given.")
    file: str | None = Field(default=None, description="The metadata file, for a row.")
    row: int | None = Field(
        default=None, description="Line number in the metadata file (the header is line 1)."
    )
    field: str | None = None
    user_id: str | None = None

    @field_validator("detail", "path", "file", "user_id", "field")
    @classmethod
    def _safe(cls, value: str | None) -> str | None:
        return None if value is None else safe_text(value)


class Notice(BaseModel):
    """Something accepted but changed on the way in (e.g. an animated image: first frame used)."""

    path: str
    detail: str

    @field_validator("path", "detail")
    @classmethod
    def _safe(cls, value: str) -> str:
        return safe_text(value)


class Counts(BaseModel):
    photos_seen: int = Field(default=0, description="Photo references read from the input (rows or files).")
    photos_stored: int = Field(default=0, description="Newly embedded and written.")
    photos_skipped: int = Field(default=0, description="Already stored for that user with the same encoder.")
    photos_updated: int = Field(
        default=0, description="Already stored; payload rewritten (user fields changed)."
    )
    photos_replaced: int = Field(
        default=0, description="Old points deleted: their file was replaced in place (the new one is in stored)."
    )
    photos_rejected: int = 0
    photos_unlisted: int = Field(
        default=0, description="Photo files under PHOTOS_DIR that no metadata row names (reason unlisted_file)."
    )
    photos_pruned: int = Field(default=0, description="Deleted by --prune (no longer in the user's input).")
    rows_rejected: int = Field(default=0, description="Metadata rows rejected before any file was read.")
    metadata_lines: int = Field(
        default=0, description="Lines of the metadata file: 1 header + blank + rows accepted + rows rejected."
    )
    metadata_blank_lines: int = 0
    rows_accepted: int = Field(default=0, description="Metadata rows that passed every check.")
    users_seen: int = Field(default=0, description="Users with a valid metadata record.")
    users_written: int = Field(default=0, description="User points (re)computed and written.")
    users_deleted: int = Field(
        default=0, description="User points deleted: none of their photos is stored any more."
    )
    users_without_photos: int = 0


class StageSeconds(BaseModel):
    """Wall seconds per stage, summed over batches."""

    metadata: float = 0.0
    setup: float = Field(default=0.0, description="Loading the encoder, opening the store, store.setup.")
    read: float = Field(default=0.0, description="Path checks, file reads, sha256.")
    preprocess: float = Field(default=0.0, description="Decode, limits, EXIF orientation, RGB.")
    encode: float = Field(default=0.0, description="encoder.embed (its own resize/patching included).")
    write: float = Field(default=0.0, description="Photo upserts, prune deletes.")
    users: float = Field(
        default=0.0, description="Reading stored photo vectors and writing user mean vectors."
    )
    reciprocity: float = 0.0
    optimize: float = 0.0
    total: float = 0.0


class IngestReport(BaseModel):
    """The JSON report of one ``matcher ingest`` run (schema version ``version``)."""

    version: int = REPORT_VERSION
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    completed: bool = Field(default=False, description="False if the run stopped early (see ``error``).")
    error: str | None = None
    photos_dir: str
    metadata: str
    layout: Literal["per_photo", "per_user"] | None = None
    layout_reason: str | None = Field(default=None, description="Why the metadata was read in that layout.")
    encoder_id: str | None = None
    dim: int | None = None
    store_backend: str | None = None
    prune: bool = False
    rebuild: bool = False
    counts: Counts = Field(default_factory=Counts)
    stage_seconds: StageSeconds = Field(default_factory=StageSeconds)
    photos_per_second: float = Field(
        default=0.0, description="Photos seen (rows or files) per second of the run after setup."
    )
    write_photos_per_second: float | None = Field(
        default=None, description="Photos stored per write-stage second."
    )
    reciprocity_refreshed: bool = False
    optimized: bool = False
    users_without_photos: list[str] = Field(
        default_factory=list, description="In the metadata; no stored photo."
    )
    rejected: list[Rejection] = Field(default_factory=list)
    notices: list[Notice] = Field(default_factory=list)

    @field_validator("users_without_photos")
    @classmethod
    def _safe_ids(cls, value: list[str]) -> list[str]:
        return [safe_text(v) for v in value]

    @property
    def any_rejected(self) -> bool:
        """True if a row or a photo of the run was rejected (unlisted files are not the run's: see ``unlisted``)."""
        return any(r.reason != Reason.UNLISTED_FILE for r in self.rejected)

    @property
    def unlisted(self) -> list[Rejection]:
        """Photo files under PHOTOS_DIR that no metadata row names (reason ``unlisted_file``)."""
        return [r for r in self.rejected if r.reason == Reason.UNLISTED_FILE]

    def reject(self, rejection: Rejection) -> None:
        """Record a rejection and count it."""
        self.rejected.append(rejection)
        if rejection.reason == Reason.UNLISTED_FILE:  # not one of the run's photos: a count of its own
            self.counts.photos_unlisted += 1
        elif rejection.kind == "photo":
            self.counts.photos_rejected += 1
        else:
            self.counts.rows_rejected += 1

    def summary(self) -> str:
        """A few lines for the terminal."""
        c, s = self.counts, self.stage_seconds
        by_reason: dict[str, int] = {}
        for r in self.rejected:
            by_reason[r.reason.value] = by_reason.get(r.reason.value, 0) + 1
        lines = [f"metadata {self.layout_reason}"] if self.layout_reason else []
        lines += [
            f"photos: {c.photos_stored} stored, {c.photos_skipped} skipped, {c.photos_updated} updated, "
            f"{c.photos_replaced} replaced, {c.photos_rejected} rejected, {c.photos_pruned} pruned; "
            f"rows rejected: {c.rows_rejected}",
            f"users: {c.users_written} written, {c.users_deleted} deleted, "
            f"{c.users_without_photos} without photos (of {c.users_seen})",
            f"metadata: {c.metadata_lines} lines = 1 header + {c.rows_accepted} rows accepted + "
            f"{c.rows_rejected} rejected + {c.metadata_blank_lines} blank",
            f"time: setup {s.setup:.2f}s, read {s.read:.2f}s, preprocess {s.preprocess:.2f}s, "
            f"encode {s.encode:.2f}s, write {s.write:.2f}s, users {s.users:.2f}s, "
            f"reciprocity {s.reciprocity:.2f}s, optimize {s.optimize:.2f}s; "
            f"total {s.total:.2f}s ({self.photos_per_second:.1f} photos/s after setup)",
        ]
        if c.photos_unlisted:
            lines.append(
                f"unlisted: {c.photos_unlisted} photo file(s) under PHOTOS_DIR that no metadata row names "
                "(not ingested; reason unlisted_file)"
            )
        if by_reason:
            lines.append("rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items())))
        if not self.completed:
            lines.append(f"NOT COMPLETED: {self.error}")
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        """Write the report as JSON, atomically (a reader never sees half a report)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.model_dump_json(indent=2))
                fh.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def read(cls, path: Path) -> IngestReport:
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


if __name__ == "__main__":  # python -m ingestion.report: the report's JSON schema
    print(json.dumps(IngestReport.model_json_schema(), indent=2))
