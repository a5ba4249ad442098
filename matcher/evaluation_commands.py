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
    _add_evaluate_embeddings(sub)
    _add_simulate(sub)
    _add_replay(sub)
    _add_demo(sub)


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


def _add_evaluate_embeddings(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-embeddings",
        help="embedding-quality report: recall@k, MAP@R, distance histograms, t-SNE map, nearest neighbours",
        description="Embed every photo of DATA_DIR (metadata.csv, a CSV with image_path,identity, or "
        "raw/profiles/<user>_<n>.jpg) and score how well photos find other photos of the same person. "
        "Writes DIR/report.md, DIR/metrics.json and PNG figures; --compare adds a second encoder beside it.",
    )
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="data folder (or a CSV file)")
    p.add_argument("--encoder", metavar="SRC", help="encoder A: hub id, checkpoint or export (MATCHER_ENCODER__SOURCE)")
    p.add_argument("--compare", metavar="SRC", help="encoder B, reported beside A")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--device", help="auto, cpu, cuda, ... (MATCHER_ENCODER__DEVICE)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="(MATCHER_ENCODER__DTYPE)")
    p.add_argument("--pixel-budget", type=int, help="max pixels per image (MATCHER_ENCODER__PIXEL_BUDGET)")
    p.add_argument("--dim", type=int, help="output dimension of a base checkpoint (MATCHER_ENCODER__DIM)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (MATCHER_ENCODER__BATCH_SIZE)")
    p.add_argument("--seed", type=int, default=0, help="seed of the t-SNE map (default 0)")
    p.add_argument("--max-map-points", type=int, default=2000, help="photos drawn in the t-SNE map (default 2000)")
    p.set_defaults(func=_evaluate_embeddings)


def _evaluate_embeddings(args: argparse.Namespace, settings: Settings) -> int:
    from evaluation.report import evaluate_embeddings
    from training.encoder import load_encoder_from_settings

    overrides = {
        k: v
        for k, v in (
            ("device", args.device),
            ("dtype", args.dtype),
            ("pixel_budget", args.pixel_budget),
            ("dim", args.dim),
            ("batch_size", args.batch_size),
        )
        if v is not None
    }
    enc_settings = settings.encoder.model_copy(update=overrides)
    encoders = [load_encoder_from_settings(enc_settings, source=args.encoder)]
    if args.compare:
        encoders.append(load_encoder_from_settings(enc_settings, source=args.compare))
    report, results = evaluate_embeddings(
        args.data_dir,
        encoders,
        args.out,
        batch_size=enc_settings.batch_size,
        progress=settings.progress,
        seed=args.seed,
        max_map_points=args.max_map_points,
    )
    for r in results:
        m = r.metrics
        print(
            f"{r.label}: recall@1 {m['recall@1']:.3f}  recall@5 {m['recall@5']:.3f}  "
            f"recall@10 {m['recall@10']:.3f}  MAP@R {m['map@r']:.3f}  "
            f"same/diff distance {m['mean_same_dist']:.3f}/{m['mean_diff_dist']:.3f}"
        )
    print(f"report: {report.report_md}")
    return 0


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="like-rate simulation of the recommender on a synthetic population (three decision worlds)",
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
        "--encoder",
        metavar="SOURCE",
        help="encoder to ingest with (default: a tiny random one built in OUT; 'truth': the hidden traits "
        "as vectors, the ceiling of any encoder)",
    )
    p.add_argument(
        "--exposure-cap",
        type=int,
        metavar="C",
        help="engine_capped's budget, oracle_capped's cap: shows/user/round (k)",
    )
    p.add_argument(
        "--world",
        action="append",
        choices=["similarity", "aspiration", "mixed"],
        help="world(s) (default all three)",
    )
    p.add_argument("--gap-penalty", type=float, default=2.0, help="aspiration: log-odds per percentile below aim")
    p.add_argument(
        "--mixed-weight",
        type=float,
        default=0.5,
        help="mixed world: weight of the aspiration terms, the rest on similarity (default 0.5)",
    )
    p.add_argument(
        "--attention",
        type=_attention,
        default=20,
        metavar="B",
        help="incoming likes a receiver looks at per round ('none': all; default 20)",
    )
    p.add_argument(
        "--newcomers",
        type=float,
        default=0.1,
        metavar="SHARE",
        help="share of users who arrive late, with no history (default 0.1; 0: none)",
    )
    p.add_argument(
        "--newcomer-round", type=int, default=3, metavar="R", help="round (from 1) the newcomers arrive in (3)"
    )
    p.add_argument("--boot", type=int, default=1000, help="bootstrap draws (default 1000)")
    p.add_argument(
        "--engine-likes", action="store_true", help="pass each viewer's likes so far to recommend(likes=...)"
    )
    p.add_argument(
        "--strategy",
        action="append",
        metavar="ID",
        help="strategy id(s) to run (default all; random and oracle are always kept)",
    )
    p.add_argument(
        "--no-feedback",
        action="store_true",
        help="do not record each round's likes and passes into the learning strategies' stores",
    )
    p.set_defaults(func=_simulate)


def _attention(text: str) -> int | None:
    if text.strip().lower() in ("none", "all", "unlimited"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"attention: an integer >= 1 or 'none', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"attention: must be at least 1, got {value}")
    return value


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from evaluation.simulation import STRATEGIES, WORLDS, WorldSettings, simulate

    chosen = set(args.strategy or STRATEGIES) | {"random", "oracle"}

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
        world_settings=WorldSettings(gap_penalty=args.gap_penalty, mixed_weight=args.mixed_weight),
        n_boot=args.boot,
        engine_likes=args.engine_likes,
        feedback=not args.no_feedback,
        strategies=tuple(s for s in STRATEGIES if s in chosen),
        attention=args.attention,
        newcomer_share=args.newcomers,
        newcomer_round=args.newcomer_round,
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

    with open_store(settings, create=False) as store:
        result = replay(args.log, store=store, settings=settings, k=args.k, n_boot=args.boot, seed=args.seed)
    print(result.table())
    if args.out:
        args.out.write_text(result.to_json(), encoding="utf-8")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job end to end on the embedded store: data, encoder, training, ingest, recommend, simulate",
        description="Run the whole job offline in a few minutes: write a synthetic population, build a tiny "
        "encoder, train it, ingest the photos into an embedded store under --out, recommend for a few users, "
        "evaluate the embeddings and simulate like rates. Prints a short table and where the reports are, "
        "then the env line that points every other command at the demo store and how to open the review "
        "page on it.",
    )
    p.add_argument("--out", type=Path, default=Path(".matcher/demo"), help="output folder (default: %(default)s)")
    p.add_argument("--users", type=int, default=120, help="demo population size (default: %(default)s)")
    p.add_argument("--sim-users", type=int, default=200, help="simulated population size (default: %(default)s)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the data, training and simulation (default: %(default)s)"
    )
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from matcher.demo import DemoSettings, run_demo

    run_demo(args.out, settings, DemoSettings(users=args.users, sim_users=args.sim_users, seed=args.seed))
    return 0
