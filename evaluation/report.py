"""Embedding-quality report: how well an encoder (or two, side by side) tells people apart in their photos.

Every photo is embedded and queries all the others (leave-one-out, ``training.metrics.retrieval_metrics``):
recall@1/5/10, MAP@R and the same-person vs different-person cosine distances. ``write_report`` puts them in
``report.md`` (a table, one column per encoder) with figures, and in ``metrics.json``:

- ``distances.png``: histograms of same- vs different-person distances (one panel per encoder);
- ``map_<label>.png``: a t-SNE map coloured by identity and, when the data has genders, by gender;
- ``neighbours_<label>.png``: query photos with their nearest neighbours, correct ones framed green.

The data folder is read by ``training.data.read_dataset`` (metadata.csv, a CSV with image_path,identity,
or ``raw/profiles/<user>_<n>.jpg``). Genders come from ``metadata.csv`` or a ``users.csv`` when present.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import InvalidInput
from training.data import Photo, load_image, read_dataset
from training.metrics import bootstrap_intervals, retrieval_metrics, scalar_metrics

if TYPE_CHECKING:
    from training.encoder import Encoder

log = logging.getLogger(__name__)

REPORT_VERSION = 1
KS = (1, 5, 10)


@dataclass
class EvalData:
    """The photos to evaluate on, with each photo's identity and (when known) gender, index-aligned."""

    source: Path
    layout: str
    photos: list[Photo]
    genders: list[str | None] | None
    attractiveness: dict[str, float] | None = None  # per identity, from a demo folder's truth.json

    @property
    def identities(self) -> list[str]:
        return [p.identity for p in self.photos]

    @property
    def paths(self) -> list[Path]:
        return [p.path for p in self.photos]


@dataclass
class EncoderResult:
    """One encoder's embeddings of the data and their metrics."""

    label: str
    source: str
    encoder_id: str
    dim: int
    embeddings: np.ndarray  # (n_photos, dim) float32, L2-normalised
    metrics: dict[str, Any]  # training.metrics.retrieval_metrics output (with the distance arrays)
    embed_seconds: float
    probes: dict[str, float] = field(default_factory=dict)  # attribute_probes output
    trained_on: list[str] = field(default_factory=list)  # the encoder card's training sources found in the data


@dataclass
class Report:
    """What ``write_report`` wrote."""

    out: Path
    report_md: Path
    metrics_json: Path
    figures: dict[str, Path] = field(default_factory=dict)


def read_eval_data(data_dir: Path) -> EvalData:
    """Photos and identities of ``data_dir`` in any layout ``training.data.read_dataset`` reads, plus genders.

    Raises ``InvalidInput`` when nothing readable is there (see ``read_dataset``).
    """
    data_dir = Path(data_dir)
    photos = read_dataset(data_dir)
    genders = _genders(data_dir, photos)
    truth = (data_dir if data_dir.is_dir() else data_dir.parent) / "truth.json"
    attractiveness = None
    if truth.is_file():
        try:
            users = json.loads(truth.read_text(encoding="utf-8"))["users"]
            attractiveness = {str(u): float(v["attractiveness"]) for u, v in users.items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"{truth}: not a demo truth file ({exc})") from exc
    return EvalData(data_dir, _layout(data_dir), photos, genders, attractiveness)


def _layout(source: Path) -> str:
    if source.is_file():
        return f"CSV {source.name}"
    if (source / "metadata.csv").is_file():
        return "metadata.csv"
    for csv_path in sorted(source.glob("*.csv")):
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            header = {h.strip() for h in next(csv.reader(f), [])}
        if {"image_path", "identity"} <= header:
            return f"mapping CSV {csv_path.name}"
    for sub in ("raw/profiles", "profiles"):
        if (source / sub).is_dir():
            return f"{sub}/<user>_<n>.jpg"
    return "<user>_<n>.jpg files"


def _genders(source: Path, photos: Sequence[Photo]) -> list[str | None] | None:
    """Per-photo gender from metadata.csv (by image path) or a users.csv (by user id); None if none has it."""
    folder = source if source.is_dir() else source.parent
    meta = source if source.is_file() else folder / "metadata.csv"
    if meta.is_file():
        with meta.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames and "gender" in [h.strip() for h in reader.fieldnames]:
                by_path: dict[Path, str] = {}
                for row in reader:
                    rel = (row.get("image_path") or "").strip()
                    if rel:
                        p = Path(rel) if Path(rel).is_absolute() else meta.parent / rel
                        by_path[p.resolve()] = (row.get("gender") or "").strip().lower()
                return [by_path.get(p.path.resolve()) or None for p in photos]
    for users_csv in (folder / "raw" / "users.csv", folder / "users.csv", folder.parent / "users.csv"):
        if users_csv.is_file():
            with users_csv.open(newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
            if rows and "gender" in rows[0] and "user_id" in rows[0]:
                by_user = {r["user_id"].strip(): r["gender"].strip().lower() for r in rows}
                return [by_user.get(p.identity) or None for p in photos]
    return None


def embed_photos(
    encoder: Encoder, photos: Sequence[Photo], *, batch_size: int = 8, chunk: int = 64, progress: bool = False
) -> np.ndarray:
    """Embed photo files in chunks (so memory holds ``chunk`` decoded images at most): (n, dim) float32.

    Raises ``InvalidInput`` naming a file that cannot be decoded.
    """
    parts: list[np.ndarray] = []
    starts = range(0, len(photos), chunk)
    iterator: Any = starts
    if progress:
        from tqdm import tqdm

        iterator = tqdm(starts, desc=f"embedding ({encoder.encoder_id[:12]})", unit="chunk")
    for s in iterator:
        images = [load_image(p.path) for p in photos[s : s + chunk]]
        parts.append(encoder.embed(images, batch_size=batch_size))
    if not parts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def evaluate_encoder(
    encoder: Encoder,
    data: EvalData,
    *,
    label: str,
    batch_size: int = 8,
    progress: bool = False,
    ks: Sequence[int] = KS,
) -> EncoderResult:
    """Embed every photo of ``data`` with ``encoder`` and compute its retrieval metrics."""
    t0 = time.perf_counter()
    emb = embed_photos(encoder, data.photos, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t0
    metrics = retrieval_metrics(emb, data.identities, ks=ks)
    probes = attribute_probes(emb, data.identities, data.genders, data.attractiveness)
    log.info("%s: recall@1 %.3f, MAP@R %.3f (%d photos, %.1f s)", label, metrics[f"recall@{ks[0]}"],
             metrics["map@r"], len(emb), seconds)  # fmt: skip
    return EncoderResult(
        label=label,
        source=str(encoder.source),
        encoder_id=str(encoder.encoder_id),
        dim=int(encoder.dim),
        embeddings=emb,
        metrics=metrics,
        embed_seconds=seconds,
        probes=probes,
        trained_on=training_overlap(encoder.source, data.source),
    )


def training_overlap(encoder_source: str | Path, data_dir: Path) -> list[str]:
    """Training data folders named in an exported encoder's card that are (or contain) ``data_dir``.

    Metrics on data the encoder was trained on are optimistic (its training identities are in there); the
    report warns. Reads ``encoder_card.json`` (``data.sources`` / ``data.val_sources``) when there is one.
    """
    card_path = Path(str(encoder_source)) / "encoder_card.json"
    if not card_path.is_file():
        return []
    try:
        data = json.loads(card_path.read_text(encoding="utf-8")).get("data") or {}
    except (OSError, ValueError, AttributeError):
        return []
    target = Path(data_dir).resolve()
    found = []
    for src in data.get("sources") or []:
        p = Path(str(src)).resolve()
        if p == target or p in target.parents or target in p.parents:
            found.append(str(src))
    return found


def attribute_probes(
    emb: np.ndarray,
    identities: Sequence[str],
    genders: Sequence[str | None] | None,
    attractiveness: dict[str, float] | None,
    *,
    folds: int = 5,
    min_people: int = 50,
    seed: int = 0,
) -> dict[str, float]:
    """How much of a person's attributes a linear model reads off the embeddings, cross-validated by person.

    - ``attractiveness_spearman``: Spearman correlation between true attractiveness (demo ``truth.json``) and
      ridge-regression predictions from each person's (standardised) mean vector, computed within each
      held-out fold and averaged over folds.
    - ``gender_accuracy`` / ``gender_majority``: out-of-fold logistic-regression accuracy on single photos,
      folds grouped by person, and the share of the most common gender (the accuracy of always guessing it).

    Pooling out-of-fold predictions across folds would be biased: an uninformative model predicts about
    each training fold's mean, which is shifted away from the held-out people (-0.4 measured on 24 people,
    -0.14 on 500 with the tiny random encoder); the correlation within a fold has no such shift. Each
    probe needs ``min_people`` people; one that cannot run is left out.
    Why it matters for a dating app: what the encoder sees beyond identity is what "similar to the people you
    liked" can pick up.
    """
    from scipy.stats import spearmanr
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import GroupKFold, KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out: dict[str, float] = {}
    x = np.asarray(emb, dtype=np.float64)
    ids = np.asarray(identities)
    if attractiveness:
        people = sorted(p for p in set(identities) if p in attractiveness)
        if len(people) >= max(min_people, 2 * folds):
            means = np.stack([x[ids == p].mean(axis=0) for p in people])
            y = np.array([attractiveness[p] for p in people])
            rhos = []
            for train, test in KFold(folds, shuffle=True, random_state=seed).split(means):
                model = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(means[train], y[train])
                rho = float(spearmanr(model.predict(means[test]), y[test]).statistic)
                if math.isfinite(rho):
                    rhos.append(rho)
            if rhos:
                out["attractiveness_spearman"] = float(np.mean(rhos))
    if genders is not None:
        keep = np.array([bool(g) for g in genders])
        y_g = np.array([g or "" for g in genders])[keep]
        if len(set(y_g)) >= 2 and len(set(ids[keep])) >= max(min_people, folds):
            try:
                clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
                pred_g = cross_val_predict(clf, x[keep], y_g,
                                           cv=GroupKFold(folds), groups=ids[keep])  # fmt: skip
            except ValueError as exc:  # a training fold with a single gender
                log.info("gender probe skipped: %s", exc)
            else:
                out["gender_accuracy"] = float((pred_g == y_g).mean())
                _, counts = np.unique(y_g, return_counts=True)
                out["gender_majority"] = float(counts.max() / counts.sum())
    return out


# Vectors of one model run twice differ by float noise only; two models that trained apart differ far more.
SAME_MODEL_ATOL = 1e-5


def same_model_notes(results: Sequence[EncoderResult]) -> list[str]:
    """One sentence per pair of encoders that give every photo the same vector: they are one model.

    The demo's "untrained vs trained" is such a pair when training kept its starting weights; the export's
    card (``validation.best_epoch`` 0: no epoch beat the untrained validation score) says so when it can.
    """
    notes = []
    for j, b in enumerate(results):
        for i, a in enumerate(results[:j]):
            if a.embeddings.shape != b.embeddings.shape or not a.embeddings.size:
                continue
            diff = float(np.max(np.abs(a.embeddings - b.embeddings)))
            if diff > SAME_MODEL_ATOL:
                continue
            note = (
                f"{_name(i, a)} and {_name(j, b)} give the same vector for every photo (largest difference "
                f"{diff:.1e}): they are one model, so their figures are the same."
            )
            kept = [(k, r) for k, r in ((i, a), (j, b)) if _card_best_epoch(r.source) == 0]
            if kept:
                k, r = kept[-1]
                note += (
                    f" {_name(k, r)} is a training export whose card says best epoch 0: no epoch beat the "
                    "untrained validation score, so the export kept the untrained weights. Train longer, on "
                    "more people, or with another learning rate."
                )
            else:
                note += (
                    " If one of them is a training export, the export kept the untrained weights "
                    "(its encoder_card.json's validation.best_epoch says which epoch it kept)."
                )
            notes.append(note)
    return notes


def _card_best_epoch(source: str) -> int | None:
    from training.qwen3_vl import CARD_NAME  # torch is loaded by now: the encoders were run

    card = Path(source) / CARD_NAME
    try:
        epoch = json.loads(card.read_text(encoding="utf-8")).get("validation", {}).get("best_epoch")
    except (OSError, ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) else None


def encoder_labels(sources: Sequence[str]) -> list[str]:
    """Short distinct labels for encoders: the last path part of each source, de-duplicated with a suffix."""
    out: list[str] = []
    for i, src in enumerate(sources):
        base = Path(str(src).rstrip("/")).name or str(src)
        label = base if base not in out else f"{base} ({i + 1})"
        out.append(label)
    return out


def _name(i: int, r: EncoderResult) -> str:
    return f"{chr(65 + i)}: {r.label}"


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "encoder"


# (key in the metrics, row title, format); recall@k rows are added for each k.
_ROWS: tuple[tuple[str, str, str], ...] = (
    ("map@r", "MAP@R", "{:.3f}"),
    ("mean_same_dist", "mean distance, same person", "{:.3f}"),
    ("mean_diff_dist", "mean distance, different people", "{:.3f}"),
    ("dist_gap", "distance gap (different - same)", "{:.3f}"),
)


def metrics_table(results: Sequence[EncoderResult], ks: Sequence[int] = KS) -> str:
    """A Markdown table: one row per metric, one column per encoder (plus B - A with exactly two)."""
    rows = [(f"recall@{k}", f"recall@{k}", "{:.3f}") for k in ks] + list(_ROWS)
    header = ["metric", *[f"{chr(65 + i)}: {r.label}" for i, r in enumerate(results)]]
    if len(results) == 2:
        header.append("B - A")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ci_keys = [f"recall@{k}" for k in ks] + ["map@r"]
    intervals = _intervals(results, ci_keys)
    for key, title, fmt in rows:
        values = [_value(r, key) for r in results]
        cells = [_fmt(v, fmt) + _ci(ci.get(key)) for v, ci in zip(values, intervals, strict=True)]
        if len(results) == 2:
            cells.append(_fmt(values[1] - values[0], "{:+.3f}") + _ci(intervals[1].get(f"{key} diff"), "{:+.3f}"))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    probe_rows = (
        ("attractiveness_spearman", "attractiveness probe (Spearman within held-out folds, ridge)"),
        ("gender_accuracy", "gender probe accuracy (logistic, folds by person)"),
        ("gender_majority", "gender: majority-class share (chance level)"),
    )
    for key, title in probe_rows:
        if any(key in r.probes for r in results):
            vals = [r.probes.get(key, float("nan")) for r in results]
            cells = [_fmt(v, "{:.3f}") for v in vals]
            if len(results) == 2:
                cells.append(_fmt(vals[1] - vals[0], "{:+.3f}"))
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    extra = [
        ("photos / second (embedding)", [_rate(r) for r in results]),
        ("dimension", [str(r.dim) for r in results]),
        ("encoder_id", [f"`{r.encoder_id}`" for r in results]),
    ]
    for title, cells in extra:
        lines.append(f"| {title} | " + " | ".join(cells) + (" | |" if len(results) == 2 else " |"))
    return "\n".join(lines)


def _intervals(results: Sequence[EncoderResult], keys: Sequence[str]) -> list[dict[str, tuple[float, float]]]:
    """95% intervals by a bootstrap over people; for the second of two encoders also of B - A (paired)."""
    out: list[dict[str, tuple[float, float]]] = []
    for i, r in enumerate(results):
        if "query_identity" not in r.metrics or not len(r.metrics["query_identity"]):
            out.append({})
            continue
        base = results[0].metrics if (i == 1 and len(results) == 2) else None
        out.append(bootstrap_intervals(r.metrics, base, keys=keys, n_boot=1000, seed=0))
    return out


def _ci(interval: tuple[float, float] | None, fmt: str = "{:.3f}") -> str:
    return "" if interval is None else f" [{fmt.format(interval[0])}, {fmt.format(interval[1])}]"


def _rate(r: EncoderResult) -> str:
    return f"{len(r.embeddings) / max(r.embed_seconds, 1e-9):.1f}"


def _value(r: EncoderResult, key: str) -> float:
    if key == "dist_gap":
        return float(r.metrics["mean_diff_dist"] - r.metrics["mean_same_dist"])
    return float(r.metrics[key])


def _fmt(v: float, fmt: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, np.floating | np.integer):
        return _json_safe(v.item())
    return v


def write_report(
    data: EvalData,
    results: Sequence[EncoderResult],
    out: Path,
    *,
    seed: int = 0,
    max_map_points: int = 2000,
    n_queries: int = 6,
    k_neighbours: int = 5,
) -> Report:
    """Write ``report.md``, ``metrics.json`` and the figures of ``results`` in ``out``."""
    from evaluation import plots

    if not results:
        raise InvalidInput("write_report: no encoder results")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    slugs: list[str] = []
    for r in results:
        s = _slug(r.label)
        slugs.append(s if s not in slugs else f"{s}_{len(slugs) + 1}")
    figures: dict[str, Path] = {}
    figures["distances"] = plots.distance_histograms(
        [(_name(i, r), r.metrics["same_dist"], r.metrics["diff_dist"]) for i, r in enumerate(results)],
        out / "distances.png",
    )
    for i, (r, s) in enumerate(zip(results, slugs, strict=True)):
        name = _name(i, r)
        figures[f"map_{s}"] = plots.embedding_map(
            r.embeddings, data.identities, data.genders, out / f"map_{s}.png",
            title=name, seed=seed, max_points=max_map_points,
        )  # fmt: skip
        figures[f"neighbours_{s}"] = plots.neighbour_grid(
            data.paths, r.embeddings, data.identities, out / f"neighbours_{s}.png",
            n_queries=n_queries, k=k_neighbours, title=name,
        )  # fmt: skip

    m0 = results[0].metrics
    summary = {
        "source": str(data.source),
        "layout": data.layout,
        "n_photos": int(m0["n_photos"]),
        "n_identities": int(m0["n_identities"]),
        "n_queries": int(m0["n_queries"]),
        "genders": None
        if data.genders is None
        else {g or "unknown": data.genders.count(g) for g in sorted(set(data.genders), key=str)},
    }
    payload = {
        "version": REPORT_VERSION,
        "data": summary,
        "encoders": [
            {
                "label": r.label,
                "source": r.source,
                "encoder_id": r.encoder_id,
                "trained_on_this_data": bool(r.trained_on),
                "dim": r.dim,
                "embed_seconds": round(r.embed_seconds, 3),
                "metrics": {k: _json_safe(v) for k, v in scalar_metrics(r.metrics).items()},
                "intervals_95": {k: [round(a, 4), round(b, 4)] for k, (a, b) in ci.items()},
                "probes": {k: _json_safe(v) for k, v in r.probes.items()},
            }
            for r, ci in zip(results, _intervals(results, [f"recall@{k}" for k in KS] + ["map@r"]), strict=True)
        ],
        "figures": {k: p.name for k, p in figures.items()},
    }
    metrics_json = out / "metrics.json"
    metrics_json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")

    lines = [
        "# Embedding quality",
        "",
        f"Data: `{data.source}` ({data.layout}): {summary['n_photos']} photos of {summary['n_identities']} "
        f"people; {summary['n_queries']} photos have another photo of the same person and serve as queries "
        "(leave-one-out: each queries all the others by cosine similarity).",
        "",
        "Encoders: " + "; ".join(f"**{chr(65 + i)}** = `{r.source}`" for i, r in enumerate(results)) + ".",
        *[
            f"\n**Warning:** {_name(i, r)} was trained on this data (`{'`, `'.join(r.trained_on)}` in its card): "
            "its training identities are among the queries, so its figures are optimistic. Evaluate on people "
            "it has not seen (e.g. `matcher make-demo-data` with another seed)."
            for i, r in enumerate(results)
            if r.trained_on
        ],
        *[f"\n**Note:** {note}" for note in same_model_notes(results)],
        "",
        "## Metrics",
        "",
        metrics_table(results),
        "",
        "recall@k: share of queries with another photo of the same person among their k nearest photos. "
        "MAP@R (Musgrave et al. 2020): with R the number of other photos of the query's person, the mean "
        "over queries of (1/R) times the sum of precision@i at each rank i <= R that is the same person; "
        "it rewards "
        "ranking the person's photos first. Distances are 1 - cos. Brackets: 95% intervals from 1,000 "
        "bootstrap draws of the people (a person's photos move together); the difference column uses paired draws. "
        "Probes (data with genders or a truth.json, 50+ people): how much gender and attractiveness a "
        "linear model reads off the vectors, cross-validated so that no person is in both fit and test.",
        "",
        "## Same-person vs different-person distances",
        "",
        "![distances](distances.png)",
        "",
        "A useful encoder puts the green (same person) mass left of the grey (different people); the dashed "
        "lines are the means.",
        "",
    ]
    for i, (r, s) in enumerate(zip(results, slugs, strict=True)):
        name = _name(i, r)
        lines += [
            f"## {name}",
            "",
            f"t-SNE map of the photo embeddings (photos of one person are joined to their centre"
            f"{'; right: coloured by gender' if data.genders is not None else ''}):",
            "",
            f"![map {name}](map_{s}.png)",
            "",
            "Query photos (left) with their nearest other photos; green frame = the same person, "
            "red = someone else, number = cosine similarity:",
            "",
            f"![neighbours {name}](neighbours_{s}.png)",
            "",
        ]
    report_md = out / "report.md"
    report_md.write_text("\n".join(lines), encoding="utf-8")
    log.info("embedding report written to %s", report_md)
    return Report(out=out, report_md=report_md, metrics_json=metrics_json, figures=figures)


def evaluate_embeddings(
    data_dir: Path,
    encoders: Sequence[Encoder],
    out: Path,
    *,
    batch_size: int = 8,
    progress: bool = False,
    seed: int = 0,
    max_map_points: int = 2000,
) -> tuple[Report, list[EncoderResult]]:
    """Read ``data_dir``, evaluate each encoder on it and write the report to ``out``."""
    if not encoders:
        raise InvalidInput("evaluate_embeddings: give at least one encoder")
    data = read_eval_data(data_dir)
    labels = encoder_labels([str(e.source) for e in encoders])
    results = [
        evaluate_encoder(e, data, label=lab, batch_size=batch_size, progress=progress)
        for e, lab in zip(encoders, labels, strict=True)
    ]
    report = write_report(data, results, out, seed=seed, max_map_points=max_map_points)
    for note in same_model_notes(results):
        log.warning("%s", note)
    return report, results
