"""Evaluation commands: ``make-demo-data`` (and the embedding report, simulation and replay commands).

Each command is added by a small ``_add_<name>(sub)`` function; handlers import their heavy modules inside.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's commands to the ``matcher`` parser."""
    _add_make_demo_data(sub)


def _add_make_demo_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-demo-data",
        help="write a synthetic population of profiles (photos, metadata.csv, truth.json)",
        description="Write synthetic profiles under OUT: photos/<user>/<n>.jpg|png, metadata.csv, "
        "truth.json, and the raw/profiles/<user>_<n>.jpg + raw/users.csv layout. Deterministic per --seed.",
    )
    p.add_argument("out", type=Path, metavar="OUT", help="output folder (must be empty unless --overwrite)")
    p.add_argument("--users", type=int, default=200, help="number of users (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace the demo files already in OUT")
    p.set_defaults(func=_make_demo_data)


def _make_demo_data(args: argparse.Namespace, settings: Settings) -> int:
    import csv

    from evaluation.demo_data import make_demo_data

    out = make_demo_data(
        args.out, users=args.users, seed=args.seed, overwrite=args.overwrite, progress=settings.progress
    )
    with (out / "metadata.csv").open(encoding="utf-8") as f:
        n_photos = sum(1 for _ in csv.reader(f)) - 1
    print(f"wrote {args.users} users, {n_photos} photos to {out}")
    return 0
