"""Retrieval metrics of photo embeddings against identity labels, in plain numpy (leave-one-out).

Every photo queries all the other photos, ranked by cosine similarity. Definitions (Musgrave, Belongie & Lim,
"A Metric Learning Reality Check", ECCV 2020):

- ``recall@k``: share of queries that have another photo of the same identity within their top ``k``.
  (Equal to ``precision_at_1`` at k = 1.)
- ``map@r``: with ``R`` = the number of other photos of the query's identity, ``AP@R = (1/R) * sum over
  i = 1..R of P(i) * rel(i)``, where ``P(i)`` is the precision of the top ``i`` and ``rel(i)`` is 1 if the
  i-th neighbour is the same identity. Mean over queries. Unlike precision, it rewards putting the positives
  *first*: ranks [hit, miss] and [miss, hit] both have precision 1/2 at R = 2 but AP@R 1/2 and 1/4.

Only queries whose identity has at least two photos count (a lone photo has nothing to find). Distances are
cosine distances ``1 - cos`` in [0, 2].
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from engine.errors import InvalidInput

log = logging.getLogger(__name__)

# Rows of the similarity matrix handled at once: bounds memory at block x n floats.
_BLOCK = 512


def retrieval_metrics(
    emb: np.ndarray,
    labels: Sequence[Hashable] | np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    *,
    max_pairs: int | None = 500_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Leave-one-out retrieval metrics of ``emb`` (n, d) float, L2-normalised rows, against ``labels`` (n,).

    Returns a dict with ``n_photos``, ``n_identities``, ``n_queries`` (photos whose identity has >= 2 photos),
    ``recall@k`` for each k in ``ks``, ``map@r``, ``mean_same_dist`` and ``mean_diff_dist`` (mean cosine
    distance over all same-identity / different-identity pairs, exact), and ``same_dist`` / ``diff_dist``:
    float32 arrays of pair distances for plots (all pairs, or a seeded random sample of about ``max_pairs``
    each when there are more). Retrieval metrics are NaN when no identity has two photos. Ties in similarity
    are broken by photo order, so results are deterministic.

    Raises ``InvalidInput`` on a shape mismatch, fewer than 2 rows, non-finite values, or rows that are not
    unit length (tolerance 1e-3), or a k < 1.
    """
    x = np.asarray(emb, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 2:
        raise InvalidInput(f"emb: expected a (n >= 2, d) array, got shape {x.shape}")
    n = x.shape[0]
    if len(labels) != n:
        raise InvalidInput(f"labels: {len(labels)} labels for {n} embeddings")
    if not np.isfinite(x).all():
        raise InvalidInput("emb: contains NaN or infinite values")
    norms = np.linalg.norm(x, axis=1)
    if np.abs(norms - 1.0).max() > 1e-3:
        lo, hi = norms.min(), norms.max()
        raise InvalidInput(f"emb: rows must be L2-normalised (norms range {lo:.4g}..{hi:.4g})")
    if any(int(k) < 1 for k in ks):
        raise InvalidInput(f"ks: every k must be >= 1, got {tuple(ks)}")

    index: dict[Hashable, int] = {}
    lab = np.fromiter((index.setdefault(v, len(index)) for v in labels), dtype=np.int64, count=n)
    counts = np.bincount(lab)
    n_pos = counts[lab] - 1  # R: other photos of each query's identity
    queries = n_pos > 0

    ks = tuple(int(k) for k in ks)
    hits = {k: np.zeros(n, dtype=bool) for k in ks}
    ap = np.zeros(n, dtype=np.float64)
    same_sum = diff_sum = 0.0
    same_n = diff_n = 0
    # Distances kept for plots: each pair with probability max_pairs / total, so memory stays bounded.
    n_same_pairs = int((counts * (counts - 1) // 2).sum())
    n_diff_pairs = n * (n - 1) // 2 - n_same_pairs
    keep_same = 1.0 if max_pairs is None else min(1.0, max_pairs / max(n_same_pairs, 1))
    keep_diff = 1.0 if max_pairs is None else min(1.0, max_pairs / max(n_diff_pairs, 1))
    rng = np.random.default_rng(seed)
    same_parts: list[np.ndarray] = []
    diff_parts: list[np.ndarray] = []
    for start in range(0, n, _BLOCK):
        rows = np.arange(start, min(start + _BLOCK, n))
        sim = x[rows] @ x.T  # (b, n)
        sim[np.arange(len(rows)), rows] = -np.inf  # a photo never retrieves itself
        # Stable sort on -sim: equal similarities keep photo order (deterministic ties).
        order = np.argsort(-sim, axis=1, kind="stable")[:, : n - 1]
        rel = lab[order] == lab[rows][:, None]  # (b, n - 1) relevance of each rank
        for k in ks:
            hits[k][rows] = rel[:, : min(k, n - 1)].any(axis=1)
        # AP@R: precision at each relevant rank among the first R ranks, averaged over R.
        r = n_pos[rows]
        rank = np.arange(1, n, dtype=np.float64)[None, :]
        within_r = rank <= r[:, None]
        prec = np.cumsum(rel, axis=1) / rank
        ap[rows] = np.where(r > 0, (prec * (rel & within_r)).sum(axis=1) / np.maximum(r, 1), 0.0)
        # Pair distances: upper triangle only (each unordered pair once).
        upper = np.arange(n)[None, :] > rows[:, None]
        same = (lab[None, :] == lab[rows][:, None]) & upper
        diff = (lab[None, :] != lab[rows][:, None]) & upper
        dist = 1.0 - np.where(np.isinf(sim), 1.0, sim)
        same_sum += float(dist[same].sum(dtype=np.float64))
        diff_sum += float(dist[diff].sum(dtype=np.float64))
        same_n += int(same.sum())
        diff_n += int(diff.sum())
        same_parts.append(_sample(dist[same], keep_same, rng))
        diff_parts.append(_sample(dist[diff], keep_diff, rng))

    n_queries = int(queries.sum())
    if n_queries == 0:
        log.warning("no identity has two photos: retrieval metrics are undefined (NaN)")
    out: dict[str, Any] = {
        "n_photos": n,
        "n_identities": int(len(counts)),
        "n_queries": n_queries,
    }
    for k in ks:
        out[f"recall@{k}"] = float(hits[k][queries].mean()) if n_queries else float("nan")
    out["map@r"] = float(ap[queries].mean()) if n_queries else float("nan")
    out["mean_same_dist"] = same_sum / same_n if same_n else float("nan")
    out["mean_diff_dist"] = diff_sum / diff_n if diff_n else float("nan")
    out["same_dist"] = np.concatenate(same_parts)
    out["diff_dist"] = np.concatenate(diff_parts)
    # Per query (photos whose identity has another photo), for intervals by person: identity index, hit@k, AP@R.
    out["query_identity"] = lab[queries]
    for k in ks:
        out[f"query_recall@{k}"] = hits[k][queries].astype(np.float64)
    out["query_map@r"] = ap[queries]
    return out


def bootstrap_intervals(
    metrics: dict[str, Any],
    baseline: dict[str, Any] | None = None,
    *,
    keys: Sequence[str] = ("recall@1", "map@r"),
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of ``keys`` from a bootstrap over *people* (photos of a person are not independent).

    ``metrics`` (and ``baseline``) are :func:`retrieval_metrics` results on the same photos. Each draw resamples
    the query identities with replacement and averages their queries. With ``baseline``, also the paired
    difference ``metrics - baseline`` under ``"<key> diff"`` (the same people in each draw).

    Raises ``InvalidInput`` when a result lacks the per-query arrays or the two cover other queries.
    """
    if not 0.0 < level < 1.0:
        raise InvalidInput(f"level must be in (0, 1), got {level}")
    ident = np.asarray(metrics.get("query_identity"))
    if ident.ndim != 1 or ident.size == 0:
        raise InvalidInput("metrics hold no per-query values (query_identity); use retrieval_metrics")
    if baseline is not None and not np.array_equal(np.asarray(baseline.get("query_identity")), ident):
        raise InvalidInput("baseline covers other queries: compare two encoders on the same photos")
    people, inverse = np.unique(ident, return_inverse=True)
    n_people = len(people)
    per_person = np.bincount(inverse, minlength=n_people).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_people, size=(n_boot, n_people))
    weights = np.stack([np.bincount(d, minlength=n_people) for d in draws]).astype(np.float64)  # (B, people)
    denom = weights @ per_person
    alpha = (1.0 - level) / 2.0
    out: dict[str, tuple[float, float]] = {}

    def sums(result: dict[str, Any], key: str) -> np.ndarray:
        values = np.asarray(result.get(f"query_{key}"), dtype=np.float64)
        if values.shape != ident.shape:
            raise InvalidInput(f"metrics hold no per-query {key!r}")
        return np.bincount(inverse, weights=values, minlength=n_people)

    for key in keys:
        stat = (weights @ sums(metrics, key)) / denom
        out[key] = (float(np.quantile(stat, alpha)), float(np.quantile(stat, 1 - alpha)))
        if baseline is not None:
            diff = stat - (weights @ sums(baseline, key)) / denom
            out[f"{key} diff"] = (float(np.quantile(diff, alpha)), float(np.quantile(diff, 1 - alpha)))
    return out


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float | int]:
    """The numbers of a ``retrieval_metrics`` result, without the distance arrays (for JSON and logs)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, np.ndarray)}


def _sample(values: np.ndarray, keep: float, rng: np.random.Generator) -> np.ndarray:
    if keep < 1.0:
        values = values[rng.random(len(values)) < keep]
    return values.astype(np.float32)
