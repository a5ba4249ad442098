"""Ingestion commands: ``matcher ingest``. Heavy imports happen inside the handler."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from engine.settings import Settings

if TYPE_CHECKING:
    from ingestion.report import Rejection


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's commands to the ``matcher`` parser."""
    p = sub.add_parser(
        "ingest",
        help="embed a folder of photos and store per-photo and per-user vectors",
        description=(
            "Read PHOTOS_DIR and its metadata CSV, embed every new photo, write photo and user vectors. "
            "Incremental: photos already stored for the user with the same encoder are skipped. "
            "Exit status: 0 all input taken, 1 some input rejected (listed in the report), 2 error, 3 bad "
            "MATCHER_* setting. Photo files under PHOTOS_DIR that no row names are listed (unlisted_file), "
            "not counted as rejected."
        ),
    )
    p.add_argument("photos_dir", type=Path, metavar="PHOTOS_DIR")
    p.add_argument(
        "--metadata",
        type=Path,
        required=True,
        metavar="CSV",
        help="user_id,image_path,gender,age[,seeking,age_min,age_max] (image_path relative to PHOTOS_DIR), "
        "or one row per user with photos named <user_id>_<n>.jpg",
    )
    p.add_argument(
        "--encoder", metavar="PATH_OR_ID", help="encoder to embed with (default: MATCHER_ENCODER__SOURCE)"
    )
    p.add_argument("--report", type=Path, metavar="JSON", help="write the run report here")
    p.add_argument(
        "--prune",
        action="store_true",
        help="delete stored photos of these users that this run did not accept",
    )
    p.add_argument(
        "--rebuild", action="store_true", help="drop and recreate the collections (needed to change encoder)"
    )
    p.set_defaults(func=ingest_command)


def ingest_command(args: argparse.Namespace, settings: Settings) -> int:
    from ingestion.job import run_ingest
    from ingestion.report import Reason

    if args.encoder:
        settings = settings.model_copy(
            update={"encoder": settings.encoder.model_copy(update={"source": args.encoder})}
        )
    report = run_ingest(
        args.photos_dir,
        args.metadata,
        settings=settings,
        prune=args.prune,
        rebuild=args.rebuild,
        report_path=args.report,
    )
    print(report.summary())
    where = f"; see {args.report}" if args.report else "; pass --report FILE for the list"
    unlisted = report.unlisted
    if unlisted:  # not a rejection of the run's input (exit status unchanged), but never silent
        n = len(unlisted)
        print(f"matcher ingest: {n} photo file(s) that no metadata row names, not ingested{where}", file=sys.stderr)
        _print_some(unlisted)
    if report.any_rejected:
        rejected = [r for r in report.rejected if r.reason != Reason.UNLISTED_FILE]
        print(f"matcher ingest: {len(rejected)} input(s) rejected{where}", file=sys.stderr)
        _print_some(rejected)
        return 1
    return 0


def _print_some(rejected: list[Rejection], n: int = 10) -> None:
    for r in rejected[:n]:
        loc = r.path or (f"{r.file}:{r.row}" if r.row is not None else r.file or "")
        print(f"  {r.reason.value}: {loc}: {r.detail}", file=sys.stderr)
    if len(rejected) > n:
        print(f"  ... and {len(rejected) - n} more", file=sys.stderr)
