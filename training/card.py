"""The model card of a training run: ``encoder_card.json`` (machine-read) and ``model_card.md`` (for people).

The JSON is the export's own card (:func:`training.encoder.save_encoder` writes it; ``load_encoder`` reads
it); training adds the data counts, the settings, the validation metrics of every epoch and the choice of the
best one. The markdown is rendered from that JSON alone, so the two never disagree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MODEL_CARD_MD = "model_card.md"
_EPOCH_KEYS = ("recall@1", "recall@5", "map@r", "mean_same_dist", "mean_diff_dist")


def read_epochs(metrics_log: Path) -> list[dict[str, Any]]:
    """One entry per evaluated epoch (0 = untrained) from ``metrics.jsonl``: epoch, step, train loss, val."""
    if not metrics_log.is_file():
        return []
    entries = [json.loads(line) for line in metrics_log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [
        {
            "epoch": e["epoch"],
            "step": e.get("step", 0),
            "train_loss": e.get("train_loss"),
            "seconds": e.get("seconds"),
            "val": {k: e["val"][k] for k in _EPOCH_KEYS if k in e.get("val", {})},
            "best": bool(e.get("best", e["epoch"] == 0)),
        }
        for e in entries
    ]


def _f(v: Any, fmt: str = "{:.3f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return fmt.format(v) if isinstance(v, int | float) else str(v)


def render_model_card(card: dict[str, Any]) -> str:
    """``model_card.md`` from an ``encoder_card.json`` of a training run."""
    data = card.get("data", {})
    val, untrained = card.get("validation", {}), card.get("untrained_validation", {})
    settings = card.get("train_settings", {})
    lines = [
        f"# Photo encoder `{card.get('encoder_id', '?')}`",
        "",
        f"Base model: `{card.get('base_model', '?')}`; tower export: {card.get('tower', '?')}; output dimension "
        f"{card.get('dim', '?')}; pixel budget {card.get('pixel_budget', '?')} per image.",
        "",
        "## Data",
        "",
        "| | photos | people |",
        "|---|---|---|",
    ]
    for name in ("train", "val"):
        c = data.get(name, {})
        lines.append(f"| {'training' if name == 'train' else 'validation'} | {_f(c.get('photos'), '{}')} | "
                     f"{_f(c.get('identities'), '{}')} |")  # fmt: skip
    lines += [
        "",
        f"Sources: {', '.join(f'`{s}`' for s in data.get('sources', [])) or '–'}; validation: "
        f"{', '.join(f'`{s}`' for s in data.get('val_sources', [])) or 'split from the training sources by person'}"
        ". No person is in both.",
        "",
        "## Validation (people not trained on)",
        "",
        "| | recall@1 | recall@5 | MAP@R | same-person dist | other-person dist |",
        "|---|---|---|---|---|---|",
        "| untrained | " + " | ".join(_f(untrained.get(k)) for k in _EPOCH_KEYS) + " |",
        f"| best (epoch {val.get('best_epoch', '?')}) | " + " | ".join(_f(val.get(k)) for k in _EPOCH_KEYS) + " |",
        "",
        f"Epochs run: {card.get('epochs_run', '?')} of {settings.get('epochs', '?')}, {card.get('steps', '?')} "
        f"optimiser steps; stopped early: {'yes' if card.get('stopped_early') else 'no'} (patience "
        f"{settings.get('patience', '?')} epochs on validation MAP@R). The export holds the best epoch's weights.",
        "",
        "## Metrics per epoch",
        "",
        "| epoch | step | train loss | recall@1 | MAP@R | same dist | other dist | seconds | best so far |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in card.get("epochs", []):
        v = e.get("val", {})
        lines.append(
            f"| {e['epoch']} | {e.get('step', '')} | {_f(e.get('train_loss'))} | {_f(v.get('recall@1'))} | "
            f"{_f(v.get('map@r'))} | {_f(v.get('mean_same_dist'))} | {_f(v.get('mean_diff_dist'))} | "
            f"{_f(e.get('seconds'), '{:.1f}')} | {'yes' if e.get('best') else ''} |"
        )
    lines += ["", "## Settings", "", "```json", json.dumps(settings, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def write_model_card(out_dir: Path, card_name: str = "encoder_card.json") -> Path:
    """Render ``out_dir/model_card.md`` from ``out_dir/encoder_card.json``; returns its path."""
    out = Path(out_dir)
    card = json.loads((out / card_name).read_text(encoding="utf-8"))
    path = out / MODEL_CARD_MD
    path.write_text(render_model_card(card), encoding="utf-8")
    return path
