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
    _add_simulate(sub)
    _add_replay(sub)


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


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="like-rate simulation of the recommender on a synthetic population (two decision worlds)",
        description="Make (or reuse) a synthetic population, ingest its photos with the encoder into a fresh "
        "store under OUT/store, and compare strategies (random, most-attractive-first, one-sided similarity, "
        "the engine, the engine with an exposure cap, the oracle) for R rounds of k recommendations. "
        "Decisions come from the hidden traits, calibrated on the Columbia speed-dating data. "
        "Writes OUT/report.md.",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--users", type=int, default=200, help="population size if one is made (default 200)")
    p.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    p.add_argument("--k", type=int, default=10, help="recommendations per user per round (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed: population, decisions, bootstrap (default 0)")
    p.add_argument("--population", type=Path, metavar="DIR", help="reuse this demo-data folder")
    p.add_argument(
        "--encoder", metavar="SOURCE", help="encoder to ingest with (default: a tiny random one built in OUT)"
    )
    p.add_argument(
        "--exposure-cap", type=int, metavar="C", help="engine_capped: max shows/user/round (2k)"
    )
    p.add_argument(
        "--world", action="append", choices=["similarity", "aspiration"], help="world(s) (default both)"
    )
    p.add_argument(
        "--gap-penalty", type=float, default=2.0, help="aspiration: log-odds per percentile below aim"
    )
    p.add_argument("--boot", type=int, default=1000, help="bootstrap draws (default 1000)")
    p.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from evaluation.simulate import WORLDS, WorldSettings, simulate

    result = simulate(
        args.out,
        settings=settings,
        users=args.users,
        rounds=args.rounds,
        k=args.k,
        seed=args.seed,
        population=args.population,
        encoder=args.encoder,
        exposure_cap=args.exposure_cap,
        worlds=tuple(args.world) if args.world else WORLDS,
        world_settings=WorldSettings(gap_penalty=args.gap_penalty),
        n_boot=args.boot,
    )
    print(result.table())
    print(f"\nreport: {result.report_path}  ({result.timings['total_s']:.0f} s)")
    return 0


def _add_replay(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="score a real like log with the engine: AUC and like rate of the top-k logged impressions",
        description="LOG is a CSV with columns viewer_id,viewed_id,liked (liked 0/1 or true/false) "
        "over users in the store. Reports the AUC of the engine's reciprocal score and of one-sided "
        "similarity on the logged pairs, and the like rate among each viewer's top-k logged impressions "
        "by score vs overall.",
    )
    p.add_argument("log", type=Path, metavar="LOG.csv", help="like log")
    p.add_argument("--k", type=int, default=10, help="top-k logged impressions per viewer (default 10)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap draws (default 1000)")
    p.add_argument("--out", type=Path, metavar="FILE", help="also write the results as JSON here")
    p.set_defaults(func=_replay)


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from engine.store import open_store
    from evaluation.replay import replay

    with open_store(settings) as store:
        result = replay(args.log, store=store, settings=settings, k=args.k, n_boot=args.boot, seed=args.seed)
    print(result.table())
    if args.out:
        args.out.write_text(result.to_json(), encoding="utf-8")
    return 0
