"""Parse and validate the metadata CSV into user records and photo references, in either layout.

Layouts:

- ``per_photo`` (the product's): one row per photo, columns ``user_id, image_path, gender, age`` required,
  ``seeking, age_min, age_max`` optional; ``image_path`` is relative to PHOTOS_DIR. The user fields repeat on
  every row of a user and must agree.
- ``per_user`` (the original data plan's): no ``image_path`` column, one row per user; the photos are the
  files ``<user_id>_<n>.<ext>`` at the top level of PHOTOS_DIR.

A bad row never stops the parse: it becomes a ``Rejection`` naming the file, the line and the field. Only a
file that cannot be read as a whole (missing, no header, a required column missing) raises ``InvalidInput``.
Nothing here opens a photo; paths are only checked for shape (absolute, ``..``), the reader does the rest.
The records it fills are in ``ingestion.records``; matching the rows to the photo folder, in ``ingestion.photo_scan``.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Literal

from engine.errors import InvalidInput
from engine.schema import parse_gender, parse_seeking
from engine.settings import Settings
from ingestion.photo_scan import scan_per_photo, scan_per_user
from ingestion.reader import check_relative
from ingestion.records import USER_ID_RE, Metadata, PhotoRef, UserRecord, has_surrogates, posix_key
from ingestion.report import Reason, Rejection, safe_text

log = logging.getLogger(__name__)

PER_PHOTO_REQUIRED = ("user_id", "image_path", "gender", "age")
PER_USER_REQUIRED = ("user_id", "gender", "age")
OPTIONAL = ("seeking", "age_min", "age_max")
# Header names that usually hold a photo's path: a per-photo file whose path column is named one of these
# would otherwise be read in the per-user layout without a word.
PATH_LIKE_COLUMNS = ("image", "img", "photo", "picture", "path", "file", "filename", "file_name", "photo_path",
                     "image_file", "imagepath", "image path", "img_path", "photo_file", "url")

# A spreadsheet runs a cell that starts with these; '-' is left to the field checks (age -5 is just bad).
_FORMULA_START = ("=", "+", "@", "\t", "\r")


def load_metadata(csv_path: Path, photos_dir: Path, settings: Settings) -> Metadata:
    """Read ``csv_path`` (UTF-8, BOM tolerated) and, for the per_user layout, list PHOTOS_DIR.

    Raises ``InvalidInput`` naming the file if it is missing, empty, has no header or lacks a required
    column; every other problem is a ``Rejection`` in the result.
    """
    csv_path = Path(csv_path)
    name = str(csv_path)
    if not csv_path.is_file():
        raise InvalidInput(f"{name}: metadata file not found")
    # surrogateescape: a row with non-UTF-8 bytes is rejected on its own instead of failing the whole file.
    with open(csv_path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        raw_lines: list[str] = []  # the physical lines the reader pulled for its current record

        def physical_lines() -> Iterator[str]:
            for text in fh:
                raw_lines.append(text)
                yield text

        reader = csv.reader(physical_lines())
        try:
            header = next(reader)
        except StopIteration:
            raise InvalidInput(f"{name}: empty file, expected a header row") from None
        except csv.Error as exc:
            raise InvalidInput(f"{name}, line 1: {exc}") from exc
        columns = [h.strip().lower() for h in header]
        dupes = sorted({c for c in columns if columns.count(c) > 1 and c})
        if dupes:
            raise InvalidInput(f"{name}: duplicated column(s): {', '.join(map(safe_text, dupes))}")
        layout: Literal["per_photo", "per_user"] = "per_photo" if "image_path" in columns else "per_user"
        required = PER_PHOTO_REQUIRED if layout == "per_photo" else PER_USER_REQUIRED
        missing = [c for c in required if c not in columns]
        if missing:
            raise InvalidInput(
                f"{name}: missing required column(s) {', '.join(missing)} "
                f"(found: {', '.join(safe_text(c) for c in columns) or 'none'})"
            )
        meta = Metadata(file=name, layout=layout, layout_reason=layout_reason(columns), lines=len(raw_lines))
        raw_lines.clear()
        parser = _RowParser(meta, settings)
        while True:
            try:
                cells: list[str] | None = next(reader)
            except StopIteration:
                break
            except csv.Error:  # a field over the csv module's limit; the reader starts afresh after it
                cells = None
            span = raw_lines.copy()
            raw_lines.clear()
            first = meta.lines + 1
            meta.lines += len(span)
            if cells is not None and len(span) == 1 and not _odd_quotes(span[0]):
                _add_cells(parser, meta, columns, cells, first)
            else:
                # A record over several lines (a quote opened and not closed on its line swallows the lines
                # after it), or one that broke the reader: every physical line is judged on its own, so a
                # stray quote costs its own row only and no row after it goes unreported.
                for i, text in enumerate(span):
                    _add_line(parser, meta, columns, text, first + i, len(span))
    repeats = sum(r.reason in (Reason.DUPLICATE_ROW, Reason.CONFLICTING_ROW) for r in meta.rejected)
    if layout == "per_user" and repeats:
        log.warning("%s: %d row(s) repeat a user_id and were rejected: %s", name, repeats, meta.layout_reason)
    if layout == "per_user":
        scan_per_user(meta, Path(photos_dir), csv_path, parser.rejected_users)
    else:
        scan_per_photo(meta, Path(photos_dir), parser.named)
    log.info(
        "metadata %s (%s layout): %d lines, %d users, %d photos, %d rows rejected",
        name, layout, meta.lines, len(meta.users), len(meta.photos), sum(r.kind == "row" for r in meta.rejected),
    )  # fmt: skip
    return meta


def layout_reason(columns: list[str]) -> str:
    """Which layout a header selects and why, in words (names a column that looks like a misnamed path)."""
    if "image_path" in columns:
        return "per-photo layout: the header has an image_path column (one row per photo)"
    found = ", ".join(safe_text(c) for c in columns if c) or "none"
    reason = (
        f"per-user layout: the header has no image_path column (found: {found}), so each row is one user and "
        "the photos are the files <user_id>_<n>.<ext> at the top level of PHOTOS_DIR"
    )
    path_like = [c for c in columns if c in PATH_LIKE_COLUMNS]
    if path_like:
        reason += f"; if column {safe_text(path_like[0])!r} holds photo paths, rename it image_path"
    return reason


def _odd_quotes(text: str) -> bool:
    # Quotes of a well-formed record come in pairs (a quoted field, or "" inside one).
    return text.count('"') % 2 == 1


def _add_cells(parser: _RowParser, meta: Metadata, columns: list[str], cells: list[str], line: int) -> None:
    if not any(c.strip() for c in cells):
        meta.blank_lines += 1
        return
    row = {col: (cells[i] if i < len(cells) else "") for i, col in enumerate(columns) if col}
    before = len(meta.rejected)
    parser.add(row, line, extra=len(cells) > len(columns))
    if len(meta.rejected) == before:
        meta.rows_accepted += 1


def _add_line(parser: _RowParser, meta: Metadata, columns: list[str], text: str, line: int, span: int) -> None:
    """Judge one physical line of a record that ran over ``span`` lines or broke the reader."""
    if not text.strip():
        meta.blank_lines += 1
        return
    try:
        cells = next(csv.reader([text]))
    except csv.Error as exc:  # field larger than the csv module's limit: this row only
        parser.reject(line, Reason.INVALID_FIELD, f"row not readable as CSV: {exc}", None, None)
        return
    if _odd_quotes(text) or any("\n" in c or "\r" in c for c in cells):
        last = line + span - 1 if span > 1 else None
        where = f" (it ran over lines {line}-{last}, which are read on their own)" if last else ""
        uid = cells[0].strip() if cells else ""
        parser.reject(
            line,
            Reason.STRAY_QUOTE,
            f'a quote (") opened on this line is not closed on it{where}; fix the quoting of this row',
            None,
            uid or None,
        )
        if meta.layout == "per_user" and USER_ID_RE.match(uid) and uid not in meta.users:
            parser.rejected_users.setdefault(uid, line)
        return
    _add_cells(parser, meta, columns, cells, line)


class _RowParser:
    """Validates rows one by one; keeps what it needs to spot duplicates and conflicts."""

    def __init__(self, meta: Metadata, settings: Settings) -> None:
        self.meta = meta
        self.settings = settings
        self.seen_paths: dict[str, tuple[str, int]] = {}  # rel_path -> (user_id, line)
        self.rejected_users: dict[str, int] = {}  # user_id -> line of its rejected row (per_user layout)
        self.named: set[str] = set()  # NFC image_path of every row, accepted or not (per_photo layout)

    def reject(self, line: int, reason: Reason, detail: str, fld: str | None, user_id: str | None) -> None:
        self.meta.rejected.append(
            Rejection(
                kind="row",
                reason=reason,
                detail=detail,
                file=self.meta.file,
                row=line,
                field=fld,
                user_id=user_id,
                path=None,
            )
        )

    def add(self, row: dict[str, str], line: int, *, extra: bool) -> None:
        uid_raw = row.get("user_id", "").strip()
        uid = uid_raw if USER_ID_RE.match(uid_raw) else None
        path_given = row.get("image_path")
        if path_given is not None and check_relative(path_given.strip()) is None:
            self.named.add(posix_key(path_given.strip()))

        def reject(reason: Reason, detail: str, fld: str | None) -> None:
            self.reject(line, reason, detail, fld, uid_raw or None)
            if self.meta.layout == "per_photo" and path_given is not None:
                self.meta.rejected[-1].path = safe_text(path_given.strip())
            if self.meta.layout == "per_user" and uid is not None and uid not in self.meta.users:
                self.rejected_users.setdefault(uid, line)

        for col, value in row.items():
            if has_surrogates(value):
                reject(Reason.NOT_UTF8, f"{col}: not valid UTF-8", col)
                return
        for col, value in row.items():
            if value.lstrip(" ").startswith(_FORMULA_START):
                reject(Reason.FORMULA, f"{col}: starts like a spreadsheet formula; refused", col)
                return
        if extra:
            reject(Reason.INVALID_FIELD, "more cells than header columns (an unquoted comma?)", None)
            return
        required = PER_PHOTO_REQUIRED if self.meta.layout == "per_photo" else PER_USER_REQUIRED
        for col in required:
            if not row.get(col, "").strip():
                reject(Reason.MISSING_FIELD, f"{col}: empty", col)
                return
        if uid is None:
            reject(
                Reason.INVALID_FIELD,
                f"user_id: {uid_raw!r} is not 1-128 letters, digits or _.@:- starting with a letter or digit",
                "user_id",
            )
            return
        try:
            record = self._user(uid, row, line)
        except _FieldError as exc:
            reject(exc.reason, str(exc), exc.field)
            return

        if self.meta.layout == "per_user":
            known = self.meta.users.get(uid)
            if known is not None:
                # Said on the row too: a per-photo file without image_path lands here on its second row.
                why = "one row per user in the per-user layout (no image_path column)"
                if known.same_profile(record):
                    reject(Reason.DUPLICATE_ROW, f"user {uid} repeats line {known.row}: {why}", "user_id")
                else:
                    reject(
                        Reason.CONFLICTING_ROW,
                        f"user {uid} already defined at line {known.row}: {why}",
                        "user_id",
                    )
                return
            self.meta.users[uid] = record
            return

        rel = (path_given or "").strip()
        refused = check_relative(rel)
        if refused is not None:
            reject(refused.reason, refused.detail, "image_path")
            return
        rel = PurePosixPath(rel.replace("\\", "/")).as_posix()
        earlier = self.seen_paths.get(posix_key(rel))
        if earlier is not None:
            owner, first_line = earlier
            if owner == uid:
                reject(
                    Reason.DUPLICATE_ROW,
                    f"image_path {rel!r} already listed at line {first_line}",
                    "image_path",
                )
            else:
                reject(
                    Reason.DUPLICATE_ROW,
                    f"image_path {rel!r} already listed for user {owner} at line {first_line}",
                    "image_path",
                )
            return
        known = self.meta.users.get(uid)
        if known is not None and not known.same_profile(record):
            diff = [k for k, v in record.fields().items() if known.fields()[k] != v]
            reject(
                Reason.CONFLICTING_ROW,
                f"{', '.join(diff)} differ(s) from line {known.row} for user {uid}",
                diff[0] if diff else None,
            )
            return
        if known is None:
            self.meta.users[uid] = record
        self.seen_paths[posix_key(rel)] = (uid, line)
        self.meta.photos.append(PhotoRef(user_id=uid, rel_path=rel, row=line))

    def _user(self, uid: str, row: dict[str, str], line: int) -> UserRecord:
        s = self.settings
        try:
            gender = parse_gender(row["gender"], s.genders)
        except InvalidInput as exc:
            raise _FieldError(Reason.INVALID_GENDER, "gender", str(exc)) from None
        age = _age(row["age"], "age", s.min_age, s.max_age)
        try:
            seeking = parse_seeking(row.get("seeking"), gender, s.genders)
        except InvalidInput as exc:
            raise _FieldError(Reason.INVALID_GENDER, "seeking", str(exc)) from None
        age_min = _age(row.get("age_min", ""), "age_min", s.min_age, s.max_age, default=s.min_age)
        age_max = _age(row.get("age_max", ""), "age_max", s.min_age, s.max_age, default=s.max_age)
        if age_min > age_max:
            raise _FieldError(Reason.INVALID_AGE, "age_min", f"age_min {age_min} is over age_max {age_max}")
        return UserRecord(uid, gender, age, tuple(seeking), age_min, age_max, line)


class _FieldError(Exception):
    def __init__(self, reason: Reason, field: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field


def _age(value: str | None, fld: str, lo: int, hi: int, *, default: int | None = None) -> int:
    text = (value or "").strip()
    if not text and default is not None:
        return default
    if not re.fullmatch(r"[0-9]{1,3}", text):
        raise _FieldError(Reason.INVALID_AGE, fld, f"{fld}: {text!r} is not an integer in {lo}-{hi}")
    age = int(text)
    if not lo <= age <= hi:
        raise _FieldError(Reason.INVALID_AGE, fld, f"{fld}: {age} is not in {lo}-{hi}")
    return age
