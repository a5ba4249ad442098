"""Figures of the simulation report, drawn as ``matplotlib.figure.Figure`` objects on an Agg canvas.

No ``pyplot`` and no ``matplotlib.use``: nothing global is touched, so drawing is safe in any process
(the rule of ``evaluation/plots.py``). Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evaluation.calibration import CalibrationData
from evaluation.simulation.metrics import METRIC_LABELS, METRICS, SimulationResult, WorldResult


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _wilson(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return mid - half, mid + half


def plot_calibration(calib: CalibrationData, path: Path, worlds: Sequence[WorldResult] = ()) -> Path:
    """Fitted P(like | partner rating) per rater gender over the data's observed rates (Wilson 95 % CI),
    and each simulated world's P(like | partner rating) on the population (dashed/dotted)."""
    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    grid = np.linspace(1, 10, 200)
    for g, colour in (("female", "tab:red"), ("male", "tab:blue")):
        xs, rates, counts = calib.binned(g)
        ci = np.array([_wilson(r * c, c) for r, c in zip(rates, counts, strict=True)])
        ax.errorbar(
            xs,
            rates,
            yerr=[rates - ci[:, 0], ci[:, 1] - rates],
            fmt="o",
            color=colour,
            capsize=3,
            label=f"data, {'women' if g == 'female' else 'men'} rating partners",
        )
        fit = calib.calibration.fits[g]
        ax.plot(
            grid,
            fit.prob(grid),
            "-",
            color=colour,
            alpha=0.8,
            label=f"fit: σ({fit.intercept:.2f} + {fit.slope:.2f}·r), mean {fit.like_rate:.3f}",
        )
        for w, style in zip(worlds, ("--", ":", "-."), strict=False):
            pts = [(x, y) for x, y, n in w.curve.get(g, []) if n >= 20]
            if pts:
                xs_w, ys_w = zip(*pts, strict=True)
                ax.plot(xs_w, ys_w, style, color=colour, alpha=0.7, label=f"world '{w.world}' ({g} raters)")
    ax.set_xlabel("partner attractiveness rating (1–10)")
    ax.set_ylabel("P(says yes)")
    ax.set_title(f"Calibration on the Columbia speed-dating data ({calib.calibration.n_dates:,} dates)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_strategies(w: WorldResult, path: Path) -> Path:
    """One bar chart per metric, one bar per strategy, 95 % CI error bars."""
    n_rows = math.ceil(len(METRICS) / 4)
    fig = _figure(16, 3.25 * n_rows)
    axes = fig.subplots(n_rows, 4)
    for spare in axes.ravel()[len(METRICS) :]:
        spare.axis("off")
    names = [s.strategy for s in w.strategies]
    colours = colormaps["tab10"](np.arange(len(names)))
    for ax, key in zip(axes.ravel(), METRICS, strict=False):
        vals = np.array([s.metrics[key].value for s in w.strategies])
        lo = np.array([s.metrics[key].lo for s in w.strategies])
        hi = np.array([s.metrics[key].hi for s in w.strategies])
        err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
        ax.bar(np.arange(len(names)), vals, yerr=err, color=colours, capsize=4)
        ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(METRIC_LABELS[key], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"World '{w.world}': strategies on the same population (95 % bootstrap CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_oracle_share(result: SimulationResult, path: Path) -> Path:
    """Share of the oracle's mutual-match lift over random, per strategy, side by side for every world."""
    fig = _figure(8, 4)
    ax = fig.subplots()
    names = [s.strategy for s in result.worlds[0].strategies if s.strategy not in ("random", "oracle")]
    width = 0.8 / max(1, len(result.worlds))
    for wi, w in enumerate(result.worlds):
        by = w.by_name()
        est = [by[n].oracle_share.get("mutual_rate") for n in names if n in by]
        vals = np.array([e.value if e else np.nan for e in est])
        lo = np.array([e.lo if e else np.nan for e in est])
        hi = np.array([e.hi if e else np.nan for e in est])
        x = np.arange(len(vals)) + (wi - (len(result.worlds) - 1) / 2) * width
        err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
        ax.bar(x, vals, width=width, yerr=err, capsize=3, label=w.world)
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(1, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("(strategy − random) / (oracle − random)")
    ax.set_title("Share of the oracle's mutual-match lift, by world")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_newcomers(result: SimulationResult, path: Path) -> Path | None:
    """Per world and strategy: newcomers' first-round exposure (share shown at least k times) and their
    success over the established users' (effective matches since arrival); None when no one arrived late."""
    worlds = [w for w in result.worlds if any(s.newcomers for s in w.strategies)]
    if not worlds:
        return None
    fig = _figure(12, 4)
    axes = fig.subplots(1, 2)
    names = [s.strategy for s in worlds[0].strategies if s.newcomers]
    width = 0.8 / len(worlds)
    shown = (
        ("shown_possible_share", "newcomers shown ≥ min(k, compatible users) times, first round")
        if any("shown_possible_share" in s.newcomers for s in worlds[0].strategies)
        else ("shown_k_share", "newcomers shown ≥ k times in their first round")
    )
    for ax, key, title, target in (
        (axes[0], *shown, 1.0),
        (axes[1], "success_ratio", "newcomers' effective matches / established users'", 0.85),
    ):
        for wi, w in enumerate(worlds):
            by = w.by_name()
            vals = np.array([by[n].newcomers.get(key, np.nan) if n in by else np.nan for n in names])
            ax.bar(np.arange(len(names)) + (wi - (len(worlds) - 1) / 2) * width, vals, width=width, label=w.world)
        ax.axhline(target, color="grey", lw=0.8, ls="--")
        ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Newcomers (dashed: the targets)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
