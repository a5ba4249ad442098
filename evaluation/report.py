"""Embedding-quality report: how well an encoder (or two, side by side) tells people apart in their photos.

Every photo is embedded and queries all the others (leave-one-out, ``training.metrics.retrieval_metrics``):
recall@1/5/10, MAP@R and the same-person vs different-person cosine distances. ``write_report`` puts them in
``report.md`` (a table, one column per encoder) with figures, and in ``metrics.json``:

- ``distances.png``: histograms of same- vs different-person distances (one panel per encoder);
- ``map_<label>.png``: a t-SNE map coloured by identity and, when the data has genders, by gender;
- ``neighbours_<label>.png``: query photos with their nearest neighbours, correct ones framed green.

The data and the metrics are ``evaluation.embeddings``'; this module writes them.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import InvalidInput
from evaluation.embeddings import (
    KS,
    EncoderResult,
    EvalData,
    encoder_labels,
    encoder_name,
    evaluate_encoder,
    read_eval_data,
    same_model_notes,
)
from training.metrics import bootstrap_intervals, scalar_metrics

if TYPE_CHECKING:
    from training.encoder import Encoder

log = logging.getLogger(__name__)

REPORT_VERSION = 1


@dataclass
class Report:
    """What ``write_report`` wrote."""

    out: Path
    report_md: Path
    metrics_json: Path
    figures: dict[str, Path] = field(default_factory=dict)


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
        [(encoder_name(i, r), r.metrics["same_dist"], r.metrics["diff_dist"]) for i, r in enumerate(results)],
        out / "distances.png",
    )
    for i, (r, s) in enumerate(zip(results, slugs, strict=True)):
        name = encoder_name(i, r)
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
            f"\n**Warning:** {encoder_name(i, r)} was trained on this data "
            f"(`{'`, `'.join(r.trained_on)}` in its card): "
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
        name = encoder_name(i, r)
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
