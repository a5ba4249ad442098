"""Reciprocal reranking: the pure-numpy maths of stage 2 of ``recommend()``.

Cosine similarity between two users' mean vectors is symmetric, so a "reciprocal" score built from it
alone would change nothing. Each direction here is scored from signals that differ by direction:

* **appeal** ``a(A→B)``: how well B's photos suit A's *taste*. A's taste ``t_A`` is A's own mean vector
  (the product's hypothesis: people like looks similar to their own) blended with the mean of the people A
  has liked, when a like history exists (:func:`taste_vector`). B is judged by B's mean vector *and* B's best
  photo for that taste::

      a(A→B) = (1 - w_photo) · cos(t_A, v_B) + w_photo · max_j cos(t_A, p_Bj)

* **rank reciprocity** ``r(A→B)``: is B inside A's own top-K compatible list (the k-reciprocal test of
  person re-identification re-ranking)? A's list is ranked by A's taste, so each user stores ``kth_sim``,
  the similarity between their taste and their own K-th nearest compatible user (``engine.reciprocity``),
  and the test is one comparison, softened by a logistic::

      r(A→B) = σ((cos(t_A, v_B) - kth_A) / T)

  Near-neighbour relations are asymmetric in real data (hubs, dense regions): B can be A's nearest neighbour
  while A is far down B's list, because B has many closer neighbours (large ``kth_B``).

Each direction mixes the two, with appeal mapped from [-1, 1] to [0, 1]::

      s(A→B) = (1 - w_recip) · (1 + a(A→B)) / 2 + w_recip · r(A→B)

and the final score aggregates the two directions with a mean that punishes one-sided matches
(harmonic by default, as the RECON reciprocal recommender does; geometric, min or arithmetic selectable)::

      score = H(s(A→B), s(B→A)) = 2 · s(A→B) · s(B→A) / (s(A→B) + s(B→A))

or, where each direction is a probability (the learned model of ``engine.learned.model``), by the expected
mutual match ``product`` = P(A→B) · P(B→A) ** γ, γ (``reverse_exponent``) weighing the reply.

All weights are ``RecommendSettings`` fields, not constants here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from engine.errors import InvalidInput

Aggregation = Literal["harmonic", "geometric", "min", "arithmetic"]
# The learned model's fusion may also be "product" (its scores are probabilities); aggregate() takes all five.
Fusion = Literal["harmonic", "geometric", "min", "arithmetic", "product"]
AGGREGATIONS: tuple[str, ...] = ("harmonic", "geometric", "min", "arithmetic", "product")

# Keeps the harmonic mean finite when both directions are exactly 0.
_EPS = 1e-12


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows (or the vector) scaled to unit length, as float32; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def aggregate(
    a_to_b: np.ndarray, b_to_a: np.ndarray, method: str = "harmonic", reverse_exponent: float = 1.0
) -> np.ndarray:
    """Combine the two directional scores, element-wise; inputs in [0, 1], shape (n,).

    ``harmonic`` and ``min`` punish one-sided matches most, ``geometric`` less, ``arithmetic`` not at all.
    ``product`` is ``a_to_b · b_to_a ** reverse_exponent``: with calibrated probabilities and exponent 1 it
    is the expected mutual match P(A→B)·P(B→A); an exponent above 1 weighs the reply more, i.e. favours
    success (P(B→A) given that A likes B) over the chance that A likes at all. ``reverse_exponent`` is
    ignored by the other methods. Raises ``InvalidInput`` for an unknown method or a negative exponent.
    """
    a = np.asarray(a_to_b, dtype=np.float64)
    b = np.asarray(b_to_a, dtype=np.float64)
    if method == "product":
        if reverse_exponent < 0:
            raise InvalidInput(f"recommend.reverse_exponent: must be >= 0, got {reverse_exponent}")
        return np.asarray(np.clip(a, 0.0, None) * np.clip(b, 0.0, None) ** reverse_exponent)
    if method == "harmonic":
        return np.asarray(2.0 * a * b / np.maximum(a + b, _EPS))
    if method == "geometric":
        return np.asarray(np.sqrt(np.clip(a, 0.0, None) * np.clip(b, 0.0, None)))
    if method == "min":
        return np.minimum(a, b)
    if method == "arithmetic":
        return np.asarray((a + b) / 2.0)
    raise InvalidInput(f"recommend.aggregation: {method!r} is not one of {', '.join(AGGREGATIONS)}")


def taste_vector(own: np.ndarray, liked: np.ndarray | None, blend: float) -> np.ndarray:
    """A user's taste: ``normalize((1 - blend) · own + blend · mean(liked))``, float32 unit, shape (d,).

    ``own`` (d,) is the user's unit mean vector; ``liked`` (m, d) the unit vectors of the people they liked
    (None or empty: the taste is ``own``).
    """
    own = np.asarray(own, dtype=np.float32)
    if liked is None or len(liked) == 0 or blend <= 0.0:
        return l2_normalize(own)
    liked_mean = np.asarray(liked, dtype=np.float32).reshape(-1, own.shape[0]).mean(axis=0)
    return l2_normalize((1.0 - blend) * own + blend * liked_mean)


def best_photo_per_owner(photo_scores: np.ndarray, owner: np.ndarray, n_owners: int) -> tuple[np.ndarray, np.ndarray]:
    """For each owner, the best photo score and that photo's index into ``photo_scores``.

    ``photo_scores`` (P,), ``owner`` (P,) ints in [0, n_owners). Owners with no photo get score ``-inf``
    and index -1.
    """
    best = np.full(n_owners, -np.inf, dtype=np.float64)
    best_idx = np.full(n_owners, -1, dtype=np.int64)
    if len(photo_scores) == 0:
        return best, best_idx
    scores = np.asarray(photo_scores, dtype=np.float64)
    owner = np.asarray(owner, dtype=np.int64)
    # Sort by (owner, -score): the first row of each owner's run is that owner's best photo.
    order = np.lexsort((-scores, owner))
    sorted_owner = owner[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_owner[1:] != sorted_owner[:-1]
    winners = order[first]
    best[owner[winners]] = scores[winners]
    best_idx[owner[winners]] = winners
    return best, best_idx


def appeal(mean_score: np.ndarray, best_photo_score: np.ndarray, best_photo_weight: float) -> np.ndarray:
    """``(1 - w) · mean_score + w · best_photo_score`` (cosines, shape (n,)).

    Where a side has no photo (``best_photo_score`` is ``-inf``) the mean vector alone is used.
    """
    mean_score = np.asarray(mean_score, dtype=np.float64)
    photo = np.asarray(best_photo_score, dtype=np.float64)
    photo = np.where(np.isfinite(photo), photo, mean_score)
    return (1.0 - best_photo_weight) * mean_score + best_photo_weight * photo


def reciprocity(sim: np.ndarray, kth_sim: np.ndarray | float, temperature: float) -> np.ndarray:
    """Soft "is the other inside my top-K": ``σ((sim - kth_sim) / T)`` in (0, 1), shape (n,).

    ``sim`` is the cosine between the chooser's taste and the other's mean vector; ``kth_sim`` the same
    for the chooser's own K-th nearest compatible user (NaN where unknown: the result is 0.5, neutral).
    """
    if temperature <= 0:
        raise InvalidInput(f"recommend.reciprocity_temperature: must be > 0, got {temperature}")
    z = (np.asarray(sim, dtype=np.float64) - np.asarray(kth_sim, dtype=np.float64)) / temperature
    out = 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic, without overflow warnings
    return np.asarray(np.where(np.isnan(out), 0.5, out))


def directional(appeal_cos: np.ndarray, recip: np.ndarray, reciprocity_weight: float) -> np.ndarray:
    """One direction's score in [0, 1]: ``(1 - w) · (1 + appeal) / 2 + w · reciprocity``."""
    a01 = (1.0 + np.clip(np.asarray(appeal_cos, dtype=np.float64), -1.0, 1.0)) / 2.0
    return (1.0 - reciprocity_weight) * a01 + reciprocity_weight * np.asarray(recip, dtype=np.float64)


@dataclass(frozen=True)
class RerankInput:
    """Everything stage 2 needs about one asker A and n candidates B (cosines, no vectors).

    fwd_mean: cos(t_A, v_B) (n,)       fwd_photo: max_j cos(t_A, p_Bj) (n,), -inf where B has no photo
    rev_mean: cos(t_B, v_A) (n,)       rev_photo: max_i cos(t_B, p_Ai) (n,), -inf where A has no photo
    kth_a: A's kth_sim (scalar, NaN unknown)      kth_b: each B's kth_sim (n,), NaN where unknown
    """

    fwd_mean: np.ndarray
    fwd_photo: np.ndarray
    rev_mean: np.ndarray
    rev_photo: np.ndarray
    kth_a: float
    kth_b: np.ndarray


@dataclass(frozen=True)
class RerankWeights:
    """The weights of the scoring formula (mirrors ``RecommendSettings``)."""

    best_photo_weight: float = 0.5
    reciprocity_weight: float = 0.3
    reciprocity_temperature: float = 0.05
    aggregation: str = "harmonic"


@dataclass(frozen=True)
class RerankResult:
    """Scores per candidate, in input order: final ``score``, ``a_to_b`` = s(A→B), ``b_to_a`` = s(B→A)."""

    score: np.ndarray
    a_to_b: np.ndarray
    b_to_a: np.ndarray

    def order(self) -> np.ndarray:
        """Candidate indices by descending score (stable: ties keep the stage-1 order)."""
        return np.argsort(-self.score, kind="stable")


def rerank(x: RerankInput, w: RerankWeights) -> RerankResult:
    """Score n candidates with the formula in this module's docstring."""
    a_to_b = directional(
        appeal(x.fwd_mean, x.fwd_photo, w.best_photo_weight),
        reciprocity(x.fwd_mean, x.kth_a, w.reciprocity_temperature),
        w.reciprocity_weight,
    )
    b_to_a = directional(
        appeal(x.rev_mean, x.rev_photo, w.best_photo_weight),
        reciprocity(x.rev_mean, x.kth_b, w.reciprocity_temperature),
        w.reciprocity_weight,
    )
    return RerankResult(score=aggregate(a_to_b, b_to_a, w.aggregation), a_to_b=a_to_b, b_to_a=b_to_a)
