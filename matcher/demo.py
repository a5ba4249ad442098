"""The main job end to end on the embedded default store: ``matcher demo`` (what ``make demo`` runs).

demo data → tiny Qwen3-VL checkpoint → a few embeddings → brief training (before/after metrics) → ingestion
→ recommendations for three users → embedding report (untrained vs trained) → a small like-rate simulation.

Every step calls the same importable function its own ``matcher`` command wraps; nothing here is a shortcut.
The encoder is a tiny randomly-initialised Qwen3-VL (there is no model hub here); with the real 2B model the
same steps run through the same code with ``--base Qwen/Qwen3-VL-2B-Instruct`` on ``matcher train``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from engine.errors import InvalidInput
from engine.settings import Settings

if TYPE_CHECKING:
    from evaluation.simulation.metrics import SimulationResult
    from training.settings import TrainSettings

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class DemoSettings:
    """Sizes of the demo: small enough for a few minutes on 2 CPU cores."""

    users: int = 120
    seed: int = 0
    pixel_budget: int = 64 * 64
    dim: int = 32
    epochs: int = 64
    sim_users: int = 200
    sim_rounds: int = 3
    sim_k: int = 5
    show_users: int = 3
    show_k: int = 5


@dataclass
class DemoResult:
    out: Path
    seconds: dict[str, float] = field(default_factory=dict)
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    stored_photos: int = 0
    stored_users: int = 0
    recommended: dict[str, list[Any]] = field(default_factory=dict)
    held_out_before: dict[str, Any] = field(default_factory=dict)
    held_out_after: dict[str, Any] = field(default_factory=dict)
    held_out_intervals: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)


def demo_train_settings(demo: DemoSettings) -> TrainSettings:
    """The demo's training recipe (the study behind it: docs/training.md).

    The whole tiny tower trains: its random features carry no identity, so a head alone learns nothing on
    these photos (measured in tests/training/test_train.py). With the real 2B tower, mode="head" is the
    cheap strong baseline instead. What the study kept: the face square of the photo (``face_crop``) with
    each image's colours standardised, at 64 x 64 through 8-pixel patches (``DEMO_TINY_VISION``);
    augmentations that mimic the photos' own lighting (per-channel gain, a light ramp); a proxy loss (one
    learned vector per training person) rather than SupCon. Round 4: the face crops are decoded once and
    augmented as tensors (``augment_backend="tensor"``, mild moves of the face square), so 64 epochs fit the
    2-minute budget, and the best epoch is taken from the second half of the run (``select_from``), where the
    36 validation people's noisy MAP@R no longer picks a warm-up epoch. Round 5: outside a centred ellipse
    of the face square everything is mid-grey (``vignette``, in training and serving alike), so the tower
    cannot tell its 84 training people apart by their photos' backgrounds and clothes.
    """
    from training.augment import AugmentSettings
    from training.settings import TrainSettings

    return TrainSettings(
        mode="full",
        dim=demo.dim,
        pixel_budget=demo.pixel_budget,
        face_crop=0.8,
        standardise=True,
        vignette=0.35,
        augment_backend="tensor",
        augment=AugmentSettings(
            scale_jitter=0.15,
            shift=0.06,
            rotation_deg=10.0,
            brightness=0.25,
            contrast=0.25,
            saturation=0.0,
            hue=0.0,
            channel_gain=0.12,
            light_ramp=0.15,
            jpeg_p=0.0,
        ),
        losses=["proxy"],
        temperature=0.2,
        epochs=demo.epochs,
        patience=demo.epochs,
        select_from=0.5,
        lr=1e-3,
        tower_lr=1e-3,
        proxy_lr=1e-2,
        warmup_fraction=0.1,
        p=16,
        k=4,
        val_fraction=0.3,
        seed=demo.seed,
    )


def _step(name: str, seconds: dict[str, float], say: Callable[[str], None], fn: Callable[[], T]) -> T:
    say(f"\n== {name}")
    t = time.perf_counter()
    value = fn()
    seconds[name] = time.perf_counter() - t
    say(f"   ({seconds[name]:.1f} s)")
    return value


def _metrics_line(m: dict[str, float]) -> str:
    keys = [
        ("recall@1", "recall@1"),
        ("recall@5", "recall@5"),
        ("MAP@R", "map@r"),
        ("same-person dist", "mean_same_dist"),
        ("other-person dist", "mean_diff_dist"),
    ]
    return ", ".join(f"{label} {m[key]:.3f}" for label, key in keys if key in m)


def _interval(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


MARKER = ".matcher-demo"
_PARTS = ("data", "held-out", "tiny-qwen3-vl", "encoder", "qdrant", "embedding-report", "simulation")


def _fresh_demo_dir(out: Path) -> Path:
    """Create ``out``, or clear what an earlier demo left there; refuse a folder the demo did not make."""
    import shutil

    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise InvalidInput(f"{out}: not empty and not made by 'matcher demo'; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    for part in _PARTS:
        shutil.rmtree(out / part, ignore_errors=True)
    return out


def run_demo(
    out: Path, settings: Settings, demo: DemoSettings | None = None, say: Callable[[str], None] = print
) -> DemoResult:
    """Run the whole pipeline into ``out`` (created; the store is ``out/qdrant``). Returns what it measured.

    ``say`` receives the human-readable progress lines (``print`` for the CLI).
    """
    import numpy as np

    from engine.recommend import recommend
    from engine.store import open_store
    from engine.users import store_stats
    from evaluation.demo_data import make_demo_data
    from evaluation.report import evaluate_embeddings
    from evaluation.simulation import simulate
    from ingestion.job import run_ingest
    from training.data import load_image, read_dataset
    from training.encoder import load_encoder
    from training.loop import train
    from training.metrics import bootstrap_intervals, scalar_metrics
    from training.tiny import DEMO_TINY_VISION, build_tiny_checkpoint

    demo = demo or DemoSettings()
    out = _fresh_demo_dir(Path(out))
    settings = settings.model_copy(update={"store_path": out / "qdrant"})
    result = DemoResult(out=out)
    sec = result.seconds
    data_dir = out / "data"

    _step(
        f"1. demo data: {demo.users} synthetic users -> {data_dir}",
        sec,
        say,
        lambda: make_demo_data(data_dir, users=demo.users, seed=demo.seed),
    )
    tiny = _step(
        "2. tiny randomly-initialised Qwen3-VL checkpoint (Hugging Face format)",
        sec,
        say,
        lambda: build_tiny_checkpoint(out / "tiny-qwen3-vl", seed=demo.seed, vision=DEMO_TINY_VISION),
    )
    untrained = load_encoder(tiny, pixel_budget=demo.pixel_budget, dim=demo.dim)
    photos = read_dataset(data_dir)[:4]
    emb = untrained.embed([load_image(p.path) for p in photos])
    say(f"   encoder {untrained.encoder_id} on {untrained.device}/{str(untrained.dtype).removeprefix('torch.')}")
    for p, v in zip(photos, emb, strict=True):
        say(f"   {p.path.relative_to(data_dir)}: shape {v.shape}, dtype {v.dtype}, norm {np.linalg.norm(v):.4f}")

    train_settings = demo_train_settings(demo)
    # The untrained baseline sees photos as the trained encoder will (face crop, colour standardisation), so
    # the report's untrained -> trained difference is the training's alone.
    untrained.face_crop, untrained.standardise = train_settings.face_crop, train_settings.standardise
    untrained.vignette = train_settings.vignette
    trained = _step(
        "3. metric-learning training of the tiny tower + head (identities split train/validation)",
        sec,
        say,
        lambda: train([data_dir], out / "encoder", base=str(tiny), settings=train_settings, progress=False),
    )
    result.before, result.after = trained.untrained_metrics, trained.best_metrics
    say(f"   validation before: {_metrics_line(result.before)}")
    say(f"   validation after:  {_metrics_line(result.after)} (best epoch {trained.best_epoch})")
    if trained.best_epoch == 0:
        # Honest, not hidden: a tiny random tower trained briefly on CPU often finds nothing better than its
        # start here; the export then keeps the untrained weights. tests/training/test_train.py shows a longer
        # run on 200 demo users beating the untrained encoder; with the real 2B tower the head alone learns.
        say("   no epoch beat the untrained encoder on validation: the export keeps the untrained weights")
    encoder = load_encoder(out / "encoder")

    report = _step(
        f"4. ingestion into the embedded store ({settings.resolved_backend}) at {settings.store_path}",
        sec,
        say,
        lambda: run_ingest(
            data_dir,
            data_dir / "metadata.csv",
            settings=settings,
            encoder=encoder,
            rebuild=True,
            report_path=out / "ingest_report.json",
        ),
    )
    say("   " + report.summary().replace("\n", "\n   "))

    def show_matches() -> None:
        with open_store(settings) as store:
            stats = store_stats(store)
            result.stored_photos, result.stored_users = stats["photos"], stats["users"]
            users = sorted(u for u in {p.payload["user_id"] for p in store.scroll("users")})
            for uid in users[: demo.show_users]:
                matches = recommend(uid, k=demo.show_k, store=store, settings=settings)
                result.recommended[uid] = matches
                say(f"   {uid}: " + (", ".join(f"{m.user_id} {m.score:.3f}" for m in matches) or "(nobody)"))
                for m in matches[:2]:
                    say(f"      {m.rank}. {m.user_id}: A->B {m.score_a_to_b:.3f}, B->A {m.score_b_to_a:.3f}")

    _step(f"5. top {demo.show_k} matches for {demo.show_users} users (score = harmonic mean)", sec, say, show_matches)

    def report_on_new_people() -> None:
        # People the encoder never saw (another seed), or the trained figures would be optimistic.
        held_out = make_demo_data(out / "held-out", users=demo.users, seed=demo.seed + 1)
        _, results = evaluate_embeddings(held_out, [untrained, encoder], out / "embedding-report")
        before, after = results[0].metrics, results[1].metrics
        result.held_out_before, result.held_out_after = scalar_metrics(before), scalar_metrics(after)
        ci0 = bootstrap_intervals(before, n_boot=1000)
        ci1 = bootstrap_intervals(after, before, n_boot=1000)
        result.held_out_intervals = {"untrained": ci0, "trained": ci1}
        n = int(after["n_identities"])
        say(f"   {n} held-out people (95% intervals from a bootstrap over people):")
        for key, label in (("recall@1", "recall@1"), ("map@r", "MAP@R")):
            lo, hi = ci1[f"{key} diff"]
            say(
                f"   {label:9s} untrained {before[key]:.3f} {_interval(ci0[key])} -> trained {after[key]:.3f} "
                f"{_interval(ci1[key])}; gain {after[key] - before[key]:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            )
        say(
            f"   same-person / other-person distance: untrained {before['mean_same_dist']:.3f} / "
            f"{before['mean_diff_dist']:.3f}, trained {after['mean_same_dist']:.3f} / {after['mean_diff_dist']:.3f}"
        )

    _step("6. embedding-quality report on held-out people, untrained vs trained", sec, say, report_on_new_people)
    say(f"   {out / 'embedding-report' / 'report.md'}")

    sim = _step(
        f"7. like-rate simulation: {demo.sim_users} users, {demo.sim_rounds} rounds of {demo.sim_k}",
        sec,
        say,
        lambda: simulate(
            out / "simulation",
            settings=settings.model_copy(update={"progress": False}),
            users=demo.sim_users,
            rounds=demo.sim_rounds,
            k=demo.sim_k,
            # Another seed than the training data's, so the simulated people are not ones the encoder saw.
            seed=demo.seed + 1,
            encoder=encoder,
            n_boot=300,
        ),
    )
    for line in simulation_summary(sim):
        say(line)
    say(f"\n   reports: {sim.report_path}, {out / 'embedding-report' / 'report.md'}")
    say(f"done in {sum(sec.values()):.0f} s")
    for line in next_steps(out, data_dir, next(iter(result.recommended), "USER_ID")):
        say(line)
    return result


def simulation_summary(sim: SimulationResult) -> list[str]:
    """The simulation's lines in the demo: the compact table (the 14-column one with intervals is over 300
    characters wide, so it stays in the report)."""
    return [
        "   " + sim.compact_table().replace("\n", "\n   "),
        "   lift: mutual-match rate over random's. Every metric with its 95 % interval (and precision, coverage,",
        f"   Gini) is in {sim.report_path}",
    ]


def next_steps(out: Path, data_dir: Path, user_id: str) -> list[str]:
    """The lines the demo ends with: how to query its store, and how to open the review page on it."""
    env = f"MATCHER_STORE_PATH={out / 'qdrant'}"
    return [
        "\nnext: the demo's store is not the default one; query it with",
        f"   {env} matcher recommend {user_id}",
        "open the match-review page on it (needs the 'serve' extra, installed by make):",
        f"   {env} matcher serve --photos {data_dir}",
        f"   then open http://127.0.0.1:8000/review?user={user_id}",
    ]
