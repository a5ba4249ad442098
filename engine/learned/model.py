"""A learned, two-sided preference: P(A likes B) from the logged likes and passes (``engine.feedback``).

Each direction is a logistic model over a few signals, every one of them learned from the log::

    logit P(A likes B) = w · z(f(A, B)),   f = [pickiness_A, appeal_B, content(A, B), collab(A, B),
                                                photo(A, B), appeal_A, appeal_A · appeal_B,
                                                twin_taste(A, B), twin_taste(B, A), collab(B, A)]

* **pickiness** ``logit`` of A's like rate given, smoothed towards the population rate (``prior_weight``
  pseudo-decisions): how easily A says yes.
* **appeal** ``logit`` of B's like rate received, smoothed the same way: the population-level appeal of B,
  so a preference everyone shares ("more attractive") is learned rather than assumed. ``appeal_A`` and the
  product ``appeal_A · appeal_B`` let the weights learn that appealing people are choosier (the aspiration
  world of Bruch & Newman) — or that they are not.
* **content** A's taste in embedding space from A's likes *and* passes: Rocchio with negatives,
  ``mean(liked) - mean(passed)``, shrunk towards the population's own ``mean(liked) - mean(passed)`` with
  ``taste_shrink`` pseudo-decisions, scored as ``taste_A · v_B`` (computed in the ``taste_dims`` main
  directions of the users' vectors, which bounds the rebuild's cost at 512-d). Tastes are kept as coordinates on a
  ``rank``-dimensional basis of the tastes (the scores are dot products in that span), so a candidate's
  taste costs ``rank`` floats in its payload, not a full vector.
* **collab** latent factors of the interaction matrix by a truncated SVD (randomised power iteration,
  PureSVD); an observed entry is the decision's residual, ``like - sigmoid(pickiness_A + appeal_B - logit
  p0)`` (unobserved 0), so the factors hold who likes whom beyond what the first two signals already say
  (with like = +1, pass = -1 the leading factors repeated the like rates and who was shown to whom).
  One factor per user *as a viewer* and one *as a candidate*
  (LFRR: a model for each direction of the market; with the viewer/candidate split one factorisation holds
  both): ``p_A · q_B``, high when the people who decided like A liked B. Users with few decisions get small
  factors, so the weight of this signal grows with history.
* **twin taste** "who likes the same people": ``t_A · p_B``, where ``t_A`` is A's Rocchio taste (likes minus
  passes, shrunk the same way) over the *viewer* factors ``p`` of the people A decided on: high when A liked
  people whose taste is like B's. In a two-sided market the people who like the same profiles are of the
  same side, so ``p_A · p_B`` between the two sides is ~0 by construction (the interaction matrix is
  block-off-diagonal); the twin taste goes through A's decisions instead. Where people like those near
  themselves (the similarity world) B's taste locates B, so this needs only that B *made* decisions (every
  user makes ~60 over six rounds), where ``collab`` needs B to have *received* many.
* **mirrored** ``twin_taste(B, A)`` and ``collab(B, A) = p_B · q_A``: the reverse direction's signals, which
  predict A's like too where liking is mutual by nature (similarity), and which the fitted weights leave
  near 0 where it is not (aspiration: the appealing aim up, so B liking A says little about A liking B).
* **photo** ``cos(v_A, v_B)``: the product's similarity hypothesis, and what a cold-start pair falls back to
  (every other signal of a user without history sits at its population value).

The weights ``w`` (and the standardisation ``z``) are fitted on a held-out fifth of the log (pairs hashed
out), with the signals computed from the other four fifths, so the model learns how much each signal
predicts a decision it has not seen; then every statistic is recomputed on the whole log for serving
(``engine.learned.fit``). This module holds the model's types and how a pair is scored. Pure numpy:
importable without torch. A model stored before the last three features existed (``FEATURES_V1``) is served
as it was fitted, the missing features at weight 0 (``aligned``), until the next full rebuild. See
``engine.ranking.matches`` for how it is served (the two directions fused by
``recommend.learned_aggregation``, the expected mutual match by default).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import InvalidInput

log = logging.getLogger(__name__)


FEATURES: tuple[str, ...] = (
    "pickiness",
    "appeal",
    "content",
    "collab",
    "photo",
    "own_appeal",
    "appeal_x_own",
    "twin_taste",
    "twin_taste_back",
    "collab_back",
)

# The features of models stored before the twin and mirrored features existed: such a model is served as it was
# fitted (the missing features get weight 0, i.e. sit at their population value) until the next full rebuild.
FEATURES_V1: tuple[str, ...] = FEATURES[:7]


@dataclass(frozen=True)
class PreferenceConfig:
    """Sizes and priors of the model (mirrors ``PreferenceSettings``)."""

    prior_weight: float = 10.0  # pseudo-decisions at the population rate in the smoothed like rates
    taste_shrink: float = 10.0  # pseudo-decisions at the population taste in each user's Rocchio taste
    rank: int = 16  # taste coordinates kept per user
    factors: int = 16  # latent factors per user and side
    als_iterations: int = 6  # products with the interaction matrix in the power iteration (two per round)
    als_ridge: float = 5.0  # unused by the SVD (kept for settings compatibility)
    taste_dims: int = 64  # main directions of the users' vectors the tastes are computed in
    holdout: float = 0.2  # share of pairs the weights are fitted on
    l2: float = 1e-2  # ridge of the logistic weights (per standardised feature)
    seed: int = 0


@dataclass
class UserSide:
    """Per-user statistics, (n,) or (n, ·) arrays in the order of ``PreferenceModel.user_ids``."""

    pickiness: np.ndarray  # (n,) logit of the smoothed like rate given
    appeal: np.ndarray  # (n,) logit of the smoothed like rate received
    taste: np.ndarray  # (n, rank) taste coordinates on the basis
    vproj: np.ndarray  # (n, rank) the user's own vector on the basis
    viewer_f: np.ndarray  # (n, factors)
    item_f: np.ndarray  # (n, factors)
    twin_f: np.ndarray  # (n, factors) twin taste: Rocchio of the viewer factors of the people decided on
    n_given: np.ndarray  # (n,) int decisions given
    n_received: np.ndarray  # (n,) int decisions received
    likes_received: np.ndarray  # (n,) int likes received
    taste_reduced: np.ndarray  # (n, r0) taste in the reduced space (``space``), before the basis
    space: np.ndarray  # (d, r0) orthonormal: the main directions of the users' vectors (``_reduce``)
    basis: np.ndarray  # (r0, rank) orthonormal: the tastes' main directions (``_basis``)
    taste_prior: np.ndarray  # (r0,) the population's Rocchio taste every user is shrunk towards

    @property
    def taste_full(self) -> np.ndarray:
        """(n, d) float32: the taste in embedding space (the stage-1 query direction)."""
        return (self.taste_reduced @ self.space.T).astype(np.float32)


@dataclass
class PreferenceModel:
    """What ``fit_preference`` learns: per-user statistics, feature standardisation and weights."""

    user_ids: list[str]
    users: UserSide
    mean: np.ndarray  # (F,) feature means
    scale: np.ndarray  # (F,) feature standard deviations
    weights: np.ndarray  # (F + 1,) intercept first
    events: int
    like_rate: float
    periods: float = 1.0  # length of the log in periods (for like rates per period)
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {u: i for i, u in enumerate(self.user_ids)}

    def global_payload(self) -> dict[str, Any]:
        """The model's shared part as plain JSON values (stored beside the per-user payloads)."""
        return {
            "features": list(FEATURES),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "events": int(self.events),
            "like_rate": float(self.like_rate),
            "periods": float(self.periods),
            "cold": cold_side(self).as_payload(),
        }

    def user_payload(self, i: int) -> dict[str, Any]:
        u = self.users
        return SideStats(
            float(u.pickiness[i]), float(u.appeal[i]), u.taste[i], u.vproj[i], u.viewer_f[i], u.item_f[i],
            int(u.n_given[i]), int(u.n_received[i]), int(u.likes_received[i]), u.twin_f[i],
        ).as_payload()  # fmt: skip


@dataclass(frozen=True)
class SideStats:
    """One user's statistics as served (from a payload)."""

    pickiness: float
    appeal: float
    taste: np.ndarray
    vproj: np.ndarray
    viewer_f: np.ndarray
    item_f: np.ndarray
    n_given: int = 0
    n_received: int = 0
    likes_received: int = 0
    twin_f: np.ndarray | None = None  # None: a payload written before twin tastes (served as zeros)

    @property
    def twin(self) -> np.ndarray:
        """The twin taste, zeros for a payload written before twin tastes."""
        return self.twin_f if self.twin_f is not None else np.zeros(len(self.viewer_f))

    def as_payload(self) -> dict[str, Any]:
        return {
            "b": round(self.pickiness, 5),
            "a": round(self.appeal, 5),
            "t": np.round(self.taste, 5).tolist(),
            "vp": np.round(self.vproj, 5).tolist(),
            "p": np.round(self.viewer_f, 5).tolist(),
            "q": np.round(self.item_f, 5).tolist(),
            "n": [int(self.n_given), int(self.n_received), int(self.likes_received)],
            "tp": np.round(self.twin, 5).tolist(),
        }

    @classmethod
    def from_payload(cls, pl: dict[str, Any]) -> SideStats:
        n = pl.get("n") or [0, 0, 0]
        return cls(
            float(pl["b"]), float(pl["a"]),
            np.asarray(pl["t"], np.float64), np.asarray(pl["vp"], np.float64),
            np.asarray(pl["p"], np.float64), np.asarray(pl["q"], np.float64),
            int(n[0]), int(n[1]), int(n[2]), np.asarray(pl["tp"], np.float64) if "tp" in pl else None,
        )  # fmt: skip


def cold_side(model: PreferenceModel) -> SideStats:
    """The statistics of a user without history: population values, zero factors (``vproj`` unknown: 0)."""
    u = model.users
    r, f = u.taste.shape[1], u.viewer_f.shape[1]
    logit0 = float(logit(np.array([model.like_rate]))[0])
    cold = u.n_given == 0
    cold_taste = u.taste[cold][0] if np.any(cold) else u.taste.mean(axis=0)
    cold_twin = u.twin_f[cold][0] if np.any(cold) else u.twin_f.mean(axis=0)
    return SideStats(logit0, logit0, cold_taste, np.zeros(r), np.zeros(f), np.zeros(f), twin_f=cold_twin)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))


def pair_features(
    a: UserSide | dict[str, np.ndarray], ia: np.ndarray, b: UserSide | dict[str, np.ndarray], ib: np.ndarray,
    photo: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """(m, F) features of the pairs (A = ``a`` rows ``ia`` as viewer, B = ``b`` rows ``ib`` as candidate)."""

    def g(s: Any, key: str) -> np.ndarray:
        return np.asarray(s[key] if isinstance(s, dict) else getattr(s, key), np.float64)

    app_a, app_b = g(a, "appeal")[ia], g(b, "appeal")[ib]
    return np.column_stack(
        [
            g(a, "pickiness")[ia],
            app_b,
            _dot(g(a, "taste"), ia, g(b, "vproj"), ib),
            _dot(g(a, "viewer_f"), ia, g(b, "item_f"), ib),
            np.asarray(photo, np.float64),
            app_a,
            app_a * app_b,
            _dot(g(a, "twin_f"), ia, g(b, "viewer_f"), ib),
            _dot(g(b, "twin_f"), ib, g(a, "viewer_f"), ia),
            _dot(g(b, "viewer_f"), ib, g(a, "item_f"), ia),
        ]
    )


def _dot(x: np.ndarray, ix: np.ndarray, y: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """``x[ix] · y[iy]`` per pair (m,); zeros when ``x`` has no columns (a model stored without twin tastes).
    When one side is a single row (stage 2: the asker against its candidates) a matrix-vector product, without
    gathering that row m times."""
    if x.shape[1] == 0:
        return np.zeros(len(ix))
    if x.shape[0] == 1:
        return y[iy] @ x[0]
    if y.shape[0] == 1:
        return x[ix] @ y[0]
    return np.einsum("ij,ij->i", x[ix], y[iy])


EVENT_CHUNK = 1 << 16  # events per block in the segment sums (bounds memory at 10 M events and 512-d vectors)


def pair_cos(vectors: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(v_a, v_b) per pair (m,), in blocks (the gathered rows of 10 M pairs would not fit in memory)."""
    out = np.zeros(a.size, np.float64)
    for s in range(0, a.size, EVENT_CHUNK):
        out[s : s + EVENT_CHUNK] = np.einsum(
            "ij,ij->i", vectors[a[s : s + EVENT_CHUNK]], vectors[b[s : s + EVENT_CHUNK]]
        )
    return out


def aligned(shared: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, scale, weights)`` of a stored model's shared part laid out over this code's ``FEATURES``:
    (F,), (F,), (F + 1,). A feature the stored model lacks (one fitted before it existed, ``FEATURES_V1`` when
    ``features`` is absent) gets mean 0, scale 1 and weight 0, so the model scores exactly as it was fitted.

    Raises ``InvalidInput`` when the stored model names a feature this code does not compute, or when its
    arrays do not match its feature list."""
    names = [str(x) for x in shared.get("features") or FEATURES_V1]
    mean, scale = np.asarray(shared["mean"], np.float64), np.asarray(shared["scale"], np.float64)
    w = np.asarray(shared["weights"], np.float64)
    if names == list(FEATURES) and mean.shape == scale.shape == (len(FEATURES),) and w.shape == (len(FEATURES) + 1,):
        return mean, scale, w
    unknown = [x for x in names if x not in FEATURES]
    if unknown:
        raise InvalidInput(f"stored preference model: features {unknown} are unknown to this version; rebuild it")
    if not (mean.shape == scale.shape == (len(names),) and w.shape == (len(names) + 1,)):
        raise InvalidInput("stored preference model: weights and standardisation do not match its features")
    at = np.array([FEATURES.index(x) for x in names], np.int64)
    m, sc, wt = np.zeros(len(FEATURES)), np.ones(len(FEATURES)), np.zeros(len(FEATURES) + 1)
    m[at], sc[at], wt[0], wt[1 + at] = mean, scale, w[0], w[1:]
    return m, sc, wt


def probability(features: np.ndarray, mean: np.ndarray, scale: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """P(like) of (m, F) pair features under standardisation ``mean``/``scale`` and ``weights`` (F + 1,)."""
    z = (np.asarray(features, np.float64) - mean) / scale
    return sigmoid(weights[0] + z @ weights[1:])


def predict(model: PreferenceModel, ia: np.ndarray, ib: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """P(A likes B) for index pairs (m,), with the users' unit ``vectors`` (n, d) for the photo signal."""
    ia, ib = np.asarray(ia, np.int64), np.asarray(ib, np.int64)
    photo = pair_cos(np.asarray(vectors, np.float32), ia, ib)
    x = pair_features(model.users, ia, model.users, ib, photo)
    return probability(x, model.mean, model.scale, model.weights)


def _stack(sides: Sequence[SideStats]) -> dict[str, np.ndarray]:
    return {
        "pickiness": np.array([s.pickiness for s in sides]),
        "appeal": np.array([s.appeal for s in sides]),
        "taste": np.stack([s.taste for s in sides]),
        "vproj": np.stack([s.vproj for s in sides]),
        "viewer_f": np.stack([s.viewer_f for s in sides]),
        "item_f": np.stack([s.item_f for s in sides]),
        "twin_f": np.stack([s.twin for s in sides]),
    }


def served_probabilities(
    shared: dict[str, Any], asker: SideStats, candidates: Sequence[SideStats], photo: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(P(asker likes B), P(B likes asker)) for n candidates, from stored statistics (``SideStats``) and the
    model's shared part (``PreferenceModel.global_payload``); ``photo`` (n,) cos(v_asker, v_B)."""
    n = len(candidates)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    mean, scale, w = aligned(shared)
    a = _stack([asker])
    b = _stack(list(candidates))
    zero, idx = np.zeros(n, np.int64), np.arange(n)
    fwd = probability(pair_features(a, zero, b, idx, photo), mean, scale, w)
    rev = probability(pair_features(b, idx, a, zero, photo), mean, scale, w)
    return fwd, rev


def served_probabilities_arrays(
    shared: dict[str, Any], asker: dict[str, np.ndarray], candidates: dict[str, np.ndarray], photo: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``served_probabilities`` from stacked statistics (``engine.learned.served.ServedModel.side``): the asker
    as one row, the n candidates as n rows; the same arithmetic, without one ``SideStats`` per candidate."""
    n = len(photo)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    mean, scale, w = aligned(shared)
    zero, idx = np.zeros(n, np.int64), np.arange(n)
    fwd = probability(pair_features(asker, zero, candidates, idx, photo), mean, scale, w)
    rev = probability(pair_features(candidates, idx, asker, zero, photo), mean, scale, w)
    return fwd, rev


def congestion_factor(likes_received: np.ndarray, periods: float, capacity: float, strength: float) -> np.ndarray:
    """Exposure control: ``min(1, capacity / likes per period) ** strength`` per candidate, (n,); all ones
    when ``capacity`` is 0 (off). A user who already receives more likes than they can answer is shown less,
    which spreads attention (and matches) over more people."""
    rate = np.asarray(likes_received, np.float64) / max(periods, 1e-9)
    if capacity <= 0:
        return np.ones_like(rate)
    return np.minimum(1.0, capacity / np.maximum(rate, 1e-9)) ** strength


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN without both classes."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


__all__ = [
    "EVENT_CHUNK",
    "FEATURES",
    "FEATURES_V1",
    "PreferenceConfig",
    "PreferenceModel",
    "SideStats",
    "UserSide",
    "aligned",
    "auc",
    "cold_side",
    "congestion_factor",
    "logit",
    "pair_cos",
    "pair_features",
    "predict",
    "probability",
    "served_probabilities",
    "served_probabilities_arrays",
    "sigmoid",
]
