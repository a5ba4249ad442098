"""Embedding quality of one encoder on a data folder: the photos with their identities (and genders), each
photo's vector, and how well the vectors tell people apart.

Every photo is embedded and queries all the others (leave-one-out, ``training.metrics.retrieval_metrics``):
recall@k, MAP@R and the same-person vs different-person cosine distances; ``attribute_probes`` asks what else
the vectors carry (gender, attractiveness). ``evaluation.report`` writes these results as a report.

The data folder is read by ``training.data.read_dataset`` (metadata.csv, a CSV with image_path,identity,
or ``raw/profiles/<user>_<n>.jpg``). Genders come from ``metadata.csv`` or a ``users.csv`` when present.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import InvalidInput
from training.data import Photo, load_image, read_dataset
from training.metrics import retrieval_metrics

if TYPE_CHECKING:
    from training.encoder import Encoder

log = logging.getLogger(__name__)


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
                f"{encoder_name(i, a)} and {encoder_name(j, b)} give the same vector for every photo "
                f"(largest difference {diff:.1e}): they are one model, so their figures are the same."
            )
            kept = [(k, r) for k, r in ((i, a), (j, b)) if _card_best_epoch(r.source) == 0]
            if kept:
                k, r = kept[-1]
                note += (
                    f" {encoder_name(k, r)} is a training export whose card says best epoch 0: no epoch beat the "
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


def encoder_name(i: int, r: EncoderResult) -> str:
    return f"{chr(65 + i)}: {r.label}"
