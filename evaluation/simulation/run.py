"""``simulate()``: the whole like-rate simulation, as a few stages wired and timed in one short function.

Stages: the population on disk (``prepare_population``), the encoder (``load_sim_encoder``), photos ingested
into a fresh store (``ingest_population``), the strategies whose picks ignore the decisions
(``shared_strategies``, built once), and one ``run_world`` per decision world. (438 lines, over the ~400
guide: the stages are short and read in order; ``simulate``'s long docstring is most of the excess.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EncoderMismatch, InvalidInput
from engine.schema import USERS
from engine.settings import Settings
from engine.store import Store, open_store
from evaluation.calibration import Calibration, fit_calibration
from evaluation.simulation.baselines import QdrantRecommend, Recon
from evaluation.simulation.feedback import FeedbackLog, clone_store
from evaluation.simulation.market import MarketReference, SinkhornMarket
from evaluation.simulation.metrics import SimulationResult, WorldResult, evaluate
from evaluation.simulation.population import Population
from evaluation.simulation.report import write_simulation_report
from evaluation.simulation.rounds import newcomer_joins, run_rounds
from evaluation.simulation.strategies import (
    LEARNING,
    STRATEGIES,
    EngineStrategy,
    ExposureCapped,
    Memo,
    StoreSimilarity,
    Strategy,
    oracle_strategy,
    popularity_strategy,
    random_strategy,
)
from evaluation.simulation.truth import TruthEncoder
from evaluation.simulation.worlds import WORLDS, WorldSettings, build_world, world_curve
from ingestion.job import Embedder, run_ingest
from ingestion.report import IngestReport

log = logging.getLogger(__name__)

# A share of the users arrives late, with no history: in this round (1-based), if the run has that many.
DEFAULT_NEWCOMER_SHARE = 0.1
DEFAULT_NEWCOMER_ROUND = 3

# Incoming likes a receiver looks at per round: a plausible app's daily attention (the 10-30).
DEFAULT_ATTENTION = 20

EncoderArg = Embedder | str | Path | None


def prepare_population(out: Path, population: Path | None, *, users: int, seed: int, settings: Settings) -> Path:
    """The population folder: ``population`` as given, or ``make_demo_data(out/population)`` (reused)."""
    pop_dir = Path(population) if population is not None else out / "population"
    if population is None and not (pop_dir / "truth.json").is_file():
        from evaluation.demo_data import make_demo_data

        make_demo_data(pop_dir, users=users, seed=seed, progress=settings.progress)
    return pop_dir


def load_sim_encoder(
    encoder: EncoderArg, pop_dir: Path, out: Path, settings: Settings, tiny_pixel_budget: int
) -> Embedder:
    """An encoder: ``"truth"`` (``TruthEncoder``), the one given, one loaded from a source, or (None) a tiny
    random Qwen3-VL built in ``out/tiny-encoder``."""
    if isinstance(encoder, str) and encoder == "truth":
        return TruthEncoder(pop_dir, settings)
    if encoder is not None and not isinstance(encoder, str | Path):
        return encoder
    from training.encoder import load_encoder

    if encoder is None:
        from training.tiny import build_tiny_checkpoint

        tiny = out / "tiny-encoder"
        if not (tiny / "config.json").is_file():
            build_tiny_checkpoint(tiny, seed=0)
        return load_encoder(
            tiny, device="cpu", dtype="float32", pixel_budget=tiny_pixel_budget, dim=settings.encoder.dim
        )
    return load_encoder(encoder)


def stored_users(store: Store) -> set[str]:
    """Users whose point in ``users`` has a usable mean vector (``recommend`` raises for the others)."""
    out = set()
    for pt in store.scroll(USERS, with_vectors=True):
        v = None if pt.vector is None else np.asarray(pt.vector, dtype=np.float32)
        if v is not None and v.size and np.any(v) and np.all(np.isfinite(v)):
            out.add(str(pt.payload["user_id"]))
    return out


def ingest_population(
    pop_dir: Path, out: Path, settings: Settings, encoder: Embedder, store: Store
) -> tuple[IngestReport, set[str]]:
    """Ingest the population's photos into ``store``; returns the job's report and the users stored.

    A re-run over the same ``out`` reuses the stored vectors (the job skips photos it already holds); another
    encoder's store, or users from another population, start it afresh.
    """

    def run(rebuild: bool) -> IngestReport:
        return run_ingest(
            pop_dir,
            pop_dir / "metadata.csv",
            settings=settings,
            encoder=encoder,
            store=store,
            rebuild=rebuild,
            report_path=out / "ingest_report.json",
        )

    try:
        report = run(rebuild=False)
        stored = stored_users(store)
        if stored - set(Population.user_ids_in(pop_dir)):
            raise EncoderMismatch("the store holds users from another population")
    except EncoderMismatch as exc:
        log.info("simulation store rebuilt: %s", exc)
        report = run(rebuild=True)
        stored = stored_users(store)
    return report, stored


def strategy_stores(
    strategies: Sequence[str], store: Store, settings: Settings, out: Path
) -> dict[str, tuple[Store, Settings]]:
    """A store of its own for every learning strategy (``LEARNING``): a clone of the ingested ``store``, so
    the decisions one strategy logs never reach another (an embedded folder ``out/stores/<name>``, or the
    collection prefix ``<prefix><name>_`` on a server)."""
    own: dict[str, tuple[Store, Settings]] = {}
    for name in strategies:
        if name not in LEARNING:
            continue
        if settings.resolved_backend == "server":
            upd: dict[str, Any] = {"collection_prefix": f"{settings.collection_prefix}{name}_"}
        else:
            upd = {"store_path": out / "stores" / name}
        st_settings = settings.model_copy(update=upd)
        st = open_store(st_settings)
        clone_store(store, st)
        own[name] = (st, st_settings)
    return own


def shared_strategies(
    strategies: Sequence[str],
    store: Store,
    settings: Settings,
    pop: Population,
    *,
    rounds: int,
    k: int,
    cap: int,
    engine_likes: bool,
    own: dict[str, tuple[Store, Settings]] | None = None,
) -> dict[str, Strategy]:
    """The store-backed strategies, built once. With ``own`` (``strategy_stores``) the learning ones log
    every round's decisions into their own store; the strategies whose picks ignore the decisions are
    wrapped in ``Memo`` so the first world's picks are replayed in the others. Strategies see the users' ids
    and the store, never the population's hidden traits."""
    ids = list(pop.user_ids)
    own = own or {}
    shared: dict[str, Strategy] = {}
    if "similarity" in strategies:
        shared["similarity"] = Memo(StoreSimilarity(store, ids, depth=rounds * k))
    for name in ("engine", "engine_capped"):
        if name not in strategies:
            continue
        st, st_settings = own.get(name, (store, settings))
        if name == "engine_capped":  # the engine's own impression budget (engine.ranking.exposure), at the run's cap
            rec = st_settings.recommend.model_copy(update={"exposure_budget": cap})
            st_settings = st_settings.model_copy(update={"recommend": rec})
        log_ = FeedbackLog(st, ids, after=engine_after_feedback(st_settings)) if name in own else None
        strat: Strategy = EngineStrategy(name, st, st_settings, ids, use_likes=engine_likes, feedback=log_)
        shared[name] = strat if (engine_likes or log_ is not None) else Memo(strat)
    for name, strategy in (("qdrant_average", "average_vector"), ("qdrant_best", "best_score")):
        if name in strategies:
            st, _ = own.get(name, (store, settings))
            shared[name] = QdrantRecommend(name, st, ids, strategy)
    if "recon" in strategies:
        st, _ = own.get("recon", (store, settings))
        shared["recon"] = Recon("recon", st, ids)
    return shared


def engine_after_feedback(settings: Settings) -> Callable[[Store], object] | None:
    """What runs after each round's decisions are stored, for the engine: the full rebuild of its learned
    preference model (``engine.learned.rebuild.rebuild_preferences``), as a nightly batch would between rounds.
    None when the engine is set to the photo-only rerank."""
    if settings.recommend.model != "learned":
        return None
    from engine.learned.rebuild import rebuild_preferences

    quiet = settings.model_copy(update={"progress": False})
    return lambda store: rebuild_preferences(store, quiet)


@dataclass
class WorldRun:
    """What every world's run shares: the population, its filter, the calibration and the round settings."""

    pop: Population
    compat: np.ndarray  # (n, n) bool
    cal: Calibration
    strategies: Sequence[str]
    shared: dict[str, Strategy]
    rounds: int
    k: int
    seed: int
    n_boot: int
    world_settings: WorldSettings | None
    progress: bool
    attention: int | None = DEFAULT_ATTENTION
    joins: np.ndarray | None = None  # (n,) each user's arrival round (0-based); None: all from the start
    cap: int = 10  # most times one user is shown per round by oracle_capped (and engine_capped's budget)

    def __call__(self, wname: str) -> WorldResult:
        """Build world ``wname``, run every strategy's rounds in it and measure them."""
        pop, compat = self.pop, self.compat
        world = build_world(wname, pop, compat, self.cal, self.world_settings, seed=self.seed)
        strats: list[Strategy] = []
        for name in self.strategies:
            if name == "random":
                strats.append(random_strategy(compat, self.seed))
            elif name == "popularity":
                strats.append(popularity_strategy(compat, pop))
            elif name == "oracle":
                strats.append(oracle_strategy(compat, world))
            elif name == "oracle_capped":  # the truth-based reference under the same exposure constraint
                base = oracle_strategy(compat, world)
                fetch = -(-pop.n // self.k)  # the whole ranking: the cap never leaves a viewer short
                strats.append(ExposureCapped("oracle_capped", base, self.cap, pop.n, fetch=fetch))
            elif name == "market":
                strats.append(MarketReference(compat, world, self.attention))
            elif name == "sinkhorn":
                strats.append(SinkhornMarket(compat, world, self.attention))
            else:
                strats.append(self.shared[name])
        imps = run_rounds(
            strats,
            world,
            rounds=self.rounds,
            k=self.k,
            seed=self.seed,
            compat=compat,
            attention=self.attention,
            progress=self.progress,
            joins=self.joins,
        )
        results = evaluate(
            imps,
            pop.n,
            n_boot=self.n_boot,
            seed=self.seed,
            joins=self.joins,
            k=self.k,
            mutual=world.mutual() * compat,
            attention=self.attention,
            compat=compat,
        )
        rnd: dict[str, float] = {}
        if "random" in imps:
            imp = imps["random"]
            for g in sorted(set(pop.gender.tolist())):
                sel = pop.gender[imp.viewer] == g
                rnd[g] = float(imp.like[sel].mean()) if sel.any() else float("nan")
        return WorldResult(
            wname,
            results,
            world.intercepts,
            world.targets,
            world.random_pair_like,
            world.random_pair_mutual,
            rnd,
            world_curve(world, pop, compat, self.cal),
            choosiness=world.choosiness,
            coupling=world.coupling,
            rater_yes_sd=world.rater_yes_sd,
            n_users=pop.n,
        )


def _check_args(strategies: Sequence[str], worlds: Sequence[str], rounds: int, k: int) -> None:
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise InvalidInput(f"strategies: {unknown} not among {', '.join(STRATEGIES)}")
    for w in worlds:
        if w not in WORLDS:
            raise InvalidInput(f"world: {w!r} is not one of {', '.join(WORLDS)}")
    if rounds < 1 or k < 1:
        raise InvalidInput(f"rounds and k must be at least 1 (got {rounds}, {k})")


def simulate(
    out: Path,
    *,
    settings: Settings,
    users: int = 200,
    rounds: int = 5,
    k: int = 10,
    seed: int = 0,
    population: Path | None = None,
    encoder: EncoderArg = None,
    exposure_cap: int | None = None,
    worlds: Sequence[str] = WORLDS,
    strategies: Sequence[str] = STRATEGIES,
    world_settings: WorldSettings | None = None,
    n_boot: int = 1000,
    engine_likes: bool = False,
    feedback: bool = True,
    tiny_pixel_budget: int = 128 * 128,
    write_report: bool = True,
    attention: int | None = DEFAULT_ATTENTION,
    newcomer_share: float = DEFAULT_NEWCOMER_SHARE,
    newcomer_round: int = DEFAULT_NEWCOMER_ROUND,
) -> SimulationResult:
    """Run the like-rate simulation through the real pipeline; write ``out/report.md``, ``out/results.json``.

    ``encoder="truth"``: ``TruthEncoder`` (perfect vectors from the hidden traits: the pipeline's ceiling).
    ``population``: a demo-data folder to reuse (default: ``make_demo_data(out/population, users, seed)``,
    reused if it exists). ``encoder``: an encoder, or a source for ``load_encoder``; None builds a tiny
    random Qwen3-VL in ``out/tiny-encoder``. The photos are ingested with ``run_ingest`` into a fresh store in
    ``out/store`` (a server backend gets the collection prefix ``sim_``), and the engine strategies call
    ``recommend()`` against it. ``exposure_cap``: most times one user may be shown per round by
    ``engine_capped`` (its ``recommend.exposure_budget``) and ``oracle_capped`` (default ``k``: the mean
    exposure per round). ``engine_likes``: pass each viewer's likes
    so far to ``recommend(likes=...)`` (off: the engine ranks from photos alone, and its picks are computed
    once for all worlds). ``attention``: most incoming likes a receiver looks at per round (the first to
    arrive; None: all); effective matches count only likes that were looked at. ``newcomer_share`` of the users
    (seeded) arrive in round ``newcomer_round`` (1-based) instead of the first, with no history; none arrive
    late when the run has fewer rounds. ``feedback`` (default on):
    each round's likes and passes are recorded into the store of every learning strategy (the engine,
    ``qdrant_*``, ``recon``; each on a clone of the ingested store under ``out/stores``) before the next
    round; off, those strategies never see a decision in the store. Deterministic per ``seed``.

    Raises ``InvalidInput`` for bad arguments or an unusable population folder; store and encoder errors pass.
    """
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_args(strategies, worlds, rounds, k)
    if attention is not None and attention < 1:
        raise InvalidInput(f"attention: must be at least 1 like per receiver per round, got {attention}")
    cap = exposure_cap if exposure_cap is not None else k
    timings: dict[str, float] = {}

    t = time.perf_counter()
    pop_dir = prepare_population(out, population, users=users, seed=seed, settings=settings)
    timings["population_s"] = time.perf_counter() - t

    t = time.perf_counter()
    enc = load_sim_encoder(encoder, pop_dir, out, settings, tiny_pixel_budget)
    update: dict[str, Any] = {"store_path": out / "store"}
    if settings.resolved_backend == "server":
        update["collection_prefix"] = f"sim_{settings.collection_prefix}"
    sim_settings = settings.model_copy(update=update)
    store = open_store(sim_settings)
    opened: list[Store] = []
    try:
        report, stored = ingest_population(pop_dir, out, sim_settings, enc, store)
        timings["ingest_s"] = time.perf_counter() - t
        pop = Population.from_dir(pop_dir, sim_settings, only=stored)
        if pop.n < 2:
            raise InvalidInput(f"{pop_dir}: fewer than two users made it into the store")
        compat = pop.compatible()
        calib = fit_calibration()
        if feedback:
            own = strategy_stores(strategies, store, sim_settings, out)
            opened.extend(st for st, _ in own.values())
        else:
            own = {}
        shared = shared_strategies(
            strategies, store, sim_settings, pop, rounds=rounds, k=k, cap=cap, engine_likes=engine_likes, own=own
        )
        run_world = WorldRun(
            pop=pop,
            compat=compat,
            cal=calib.calibration,
            strategies=strategies,
            shared=shared,
            rounds=rounds,
            k=k,
            seed=seed,
            n_boot=n_boot,
            world_settings=world_settings,
            progress=settings.progress,
            attention=attention,
            joins=newcomer_joins(pop.n, newcomer_share, newcomer_round, rounds, seed),
            cap=cap,
        )
        world_results = []
        for wname in worlds:
            t = time.perf_counter()
            world_results.append(run_world(wname))
            timings[f"world_{wname}_s"] = time.perf_counter() - t
    finally:
        for st in opened:
            st.close()
        store.close()

    timings["total_s"] = time.perf_counter() - t0
    config = {
        "users": pop.n,
        "users_requested": users,
        "rounds": rounds,
        "k": k,
        "seed": seed,
        "exposure_cap": cap,
        "attention": attention,
        "newcomers": int((run_world.joins > 0).sum()) if run_world.joins is not None else 0,
        "newcomer_round": newcomer_round,
        "worlds": list(worlds),
        "strategies": list(strategies),
        "world_settings": asdict(world_settings or WorldSettings()),
        "n_boot": n_boot,
        "engine_likes": engine_likes,
        "feedback": feedback,
        "population": str(pop_dir),
        "encoder_id": getattr(enc, "encoder_id", "?"),
        "encoder_source": str(getattr(enc, "source", encoder)),
        "store_backend": store.backend,
        "compatible_pairs_per_user": float(compat.sum(axis=1).mean()),
    }
    ingest = {"counts": report.counts.model_dump(), "stage_seconds": report.stage_seconds.model_dump()}
    result = SimulationResult(config, world_results, calib.calibration.mutual_rate, timings, ingest)
    if write_report:
        result.report_path = write_simulation_report(result, calib, out)
    return result
