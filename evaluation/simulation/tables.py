"""The simulation's tables: each world's strategies with their intervals, the newcomers, and a compact view
that fits a terminal (the records they render: ``evaluation.simulation.metrics``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from evaluation.simulation.metrics import NEWCOMER_LABELS
from evaluation.simulation.strategies import STRATEGY_LABELS
from evaluation.stats import Estimate

if TYPE_CHECKING:
    from evaluation.simulation.metrics import WorldResult


def simulation_tables(worlds: Sequence[WorldResult], world: str | None = None) -> str:
    """Markdown table(s) per world (only ``world`` when given): ``strategy_table`` and ``newcomer_table``."""
    parts = []
    for w in worlds:
        if world is not None and w.world != world:
            continue
        part = f"World: {w.world}\n\n" + strategy_table(w)
        newcomers = newcomer_table(w)
        if newcomers:
            part += "\n\nNewcomers:\n\n" + newcomers
        parts.append(part)
    return "\n\n".join(parts)


def compact_tables(worlds: Sequence[WorldResult]) -> str:
    """A few columns per world that fit a terminal (< 90 characters a line): like and mutual rate, matches
    per user, mutual lift over random. Point values only; ``simulation_tables`` has the intervals."""
    parts = []
    for w in worlds:
        head = f"  {'strategy':<42} {'like':>6} {'mutual':>7} {'matches/user':>12} {'lift':>5}"
        lines = [f"world: {w.world}", head]
        for s in w.strategies:
            m = s.metrics

            def num(e: Estimate | None, d: int = 3) -> str:
                return "-" if e is None or not math.isfinite(e.value) else f"{e.value:.{d}f}"

            label = STRATEGY_LABELS.get(s.strategy, s.strategy)[:42]
            lines.append(
                f"  {label:<42} {num(m.get('like_rate')):>6} {num(m.get('mutual_rate')):>7} "
                f"{num(m.get('matches_per_user'), 2):>12} {num(s.lift.get('mutual_rate'), 2):>5}"
            )
        parts.append("\n".join(lines))
    return "\n".join(parts)


def newcomer_table(w: WorldResult) -> str:
    """Markdown table of ``newcomer_stats`` per strategy ('' when no one arrived late)."""
    rows = [s for s in w.strategies if s.newcomers]
    if not rows:
        return ""
    keys = [key for key in NEWCOMER_LABELS if key != "newcomers" and any(key in s.newcomers for s in rows)]
    lines = [
        "| strategy | " + " | ".join(NEWCOMER_LABELS[key] for key in keys) + " |",
        "|" + "---|" * (len(keys) + 1),
    ]
    for s in rows:
        cells = [f"{s.newcomers[key]:.2f}" if key in s.newcomers else "-" for key in keys]
        lines.append(f"| {STRATEGY_LABELS.get(s.strategy, s.strategy)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def strategy_table(w: WorldResult) -> str:
    head = (
        "| strategy | like rate | mutual rate | matches / user | effective rate | effective / user "
        "| prec@k viewer | prec@k candidate | coverage "
        "| Gini | match Gini | zero-match share | envy (users) "
        "| like lift | mutual lift | share of oracle lift (mutual) | share of oracle lift (like) |"
    )
    lines = [head, "|" + "---|" * 17]
    for s in w.strategies:
        m = s.metrics

        def cell(e: Estimate | None, d: int = 3) -> str:
            return "–" if e is None or not math.isfinite(e.value) else e.fmt(d)

        def envy(e: Estimate) -> str:  # as a count of users, with its interval
            if not math.isfinite(e.value):
                return "–"
            return f"{e.value * w.n_users:.0f} [{e.lo * w.n_users:.0f}, {e.hi * w.n_users:.0f}]"

        lines.append(
            f"| {STRATEGY_LABELS.get(s.strategy, s.strategy)} | {cell(m['like_rate'])} "
            f"| {cell(m['mutual_rate'])} | {cell(m['matches_per_user'], 2)} "
            f"| {cell(m['effective_rate'])} | {cell(m['effective_per_user'], 2)} "
            f"| {cell(m['precision_viewer'])} | {cell(m['precision_candidate'])} | {cell(m['coverage'])} "
            f"| {cell(m['gini'])} | {cell(m['match_gini'])} | {cell(m['zero_match_share'])} "
            f"| {envy(m['envy_share'])} | {cell(s.lift.get('like_rate'), 2)} | {cell(s.lift.get('mutual_rate'), 2)} "
            f"| {cell(s.oracle_share.get('mutual_rate'), 2)} | {cell(s.oracle_share.get('like_rate'), 2)} |"
        )
    return "\n".join(lines)
