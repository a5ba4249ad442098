"""A learned, two-sided preference: P(A likes B) from the logged likes and passes (``engine.feedback``).

Each direction is a logistic model over a few signals, every one of them learned from the log::

    logit P(A likes B) = w · z(f(A, B)),   f = [pickiness_A, appeal_B, content(A, B), collab(A, B),
                                                photo(A, B), appeal_A, appeal_A · appeal_B]

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
* **collab** latent factors of the interaction matrix (like = +1, pass = -1, unobserved 0) by a truncated
  SVD (randomised power iteration, PureSVD), one factor per user *as a viewer* and one *as a candidate*
  (LFRR: a model for each direction of the market; with the viewer/candidate split one factorisation holds
  both): ``p_A · q_B``, high when the people who decided like A liked B. Users with few decisions get small
  factors, so the weight of this signal grows with history.
* **photo** ``cos(v_A, v_B)``: the product's similarity hypothesis, and what a cold-start pair falls back to
  (every other signal of a user without history sits at its population value).

The weights ``w`` (and the standardisation ``z``) are fitted on a held-out fifth of the log (pairs hashed
out), with the signals computed from the other four fifths, so the model learns how much each signal
predicts a decision it has not seen; then every statistic is recomputed on the whole log for serving.
Pure numpy: importable without torch. See ``engine.recommend`` for how it is served (the two directions
are fused by the harmonic mean, as before).
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
)


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
            int(u.n_given[i]), int(u.n_received[i]), int(u.likes_received[i]),
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

    def as_payload(self) -> dict[str, Any]:
        return {
            "b": round(self.pickiness, 5),
            "a": round(self.appeal, 5),
            "t": np.round(self.taste, 5).tolist(),
            "vp": np.round(self.vproj, 5).tolist(),
            "p": np.round(self.viewer_f, 5).tolist(),
            "q": np.round(self.item_f, 5).tolist(),
            "n": [int(self.n_given), int(self.n_received), int(self.likes_received)],
        }

    @classmethod
    def from_payload(cls, pl: dict[str, Any]) -> SideStats:
        n = pl.get("n") or [0, 0, 0]
        return cls(
            float(pl["b"]), float(pl["a"]),
            np.asarray(pl["t"], np.float64), np.asarray(pl["vp"], np.float64),
            np.asarray(pl["p"], np.float64), np.asarray(pl["q"], np.float64),
            int(n[0]), int(n[1]), int(n[2]),
        )  # fmt: skip


def cold_side(model: PreferenceModel) -> SideStats:
    """The statistics of a user without history: population values, zero factors (``vproj`` unknown: 0)."""
    u = model.users
    r, f = u.taste.shape[1], u.viewer_f.shape[1]
    logit0 = float(_logit(np.array([model.like_rate]))[0])
    cold_taste = u.taste[u.n_given == 0][0] if np.any(u.n_given == 0) else u.taste.mean(axis=0)
    return SideStats(logit0, logit0, cold_taste, np.zeros(r), np.zeros(f), np.zeros(f))


# -- fitting -------------------------------------------------------------------------------------------------


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))


_CHUNK = 1 << 16  # events per block in the segment sums (bounds memory at 10 M events and 512-d vectors)


class _Sorted:
    """Events sorted by one key (viewer or candidate), for chunked per-user sums without ``np.add.at``."""

    def __init__(self, rows: np.ndarray, n: int) -> None:
        self.order = np.argsort(rows, kind="stable")
        self.rows = rows[self.order]
        self.n = n

    def sums(self, gather: Any, width: int, mask: np.ndarray | None = None) -> np.ndarray:
        """``out[r] = sum of gather(event indices)`` rows over the events of ``r`` (optionally where
        ``mask``); ``gather`` maps (c,) event indices to (c, width) values."""
        out = np.zeros((self.n, width), np.float64)
        order, rows = self.order, self.rows
        if mask is not None:
            keep = mask[order]
            order, rows = order[keep], rows[keep]
        for a in range(0, rows.size, _CHUNK):
            rr = rows[a : a + _CHUNK]
            vals = np.asarray(gather(order[a : a + _CHUNK]), np.float64).reshape(rr.size, width)
            starts = np.r_[0, np.flatnonzero(np.diff(rr)) + 1]
            out[rr[starts]] += np.add.reduceat(vals, starts, axis=0)
        return out


def _rates(viewer: np.ndarray, cand: np.ndarray, like: np.ndarray, n: int, m: float) -> dict[str, np.ndarray]:
    p0 = float(like.mean()) if like.size else 0.5
    given = np.bincount(viewer, minlength=n).astype(np.float64)
    given_like = np.bincount(viewer, weights=like, minlength=n)
    recv = np.bincount(cand, minlength=n).astype(np.float64)
    recv_like = np.bincount(cand, weights=like, minlength=n)
    return {
        "p0": np.array(p0),
        "pickiness": _logit((given_like + m * p0) / (given + m)),
        "appeal": _logit((recv_like + m * p0) / (recv + m)),
        "given": given,
        "recv": recv,
        "recv_like": recv_like,
    }


def like_logit(likes: np.ndarray, total: np.ndarray, p0: float, prior_weight: float) -> np.ndarray:
    """``logit((likes + m p0) / (total + m))``: a like rate smoothed towards ``p0`` with ``m`` pseudo-decisions
    (pickiness from decisions given, appeal from decisions received), as the full fit computes it."""
    return _logit((np.asarray(likes, np.float64) + prior_weight * p0) / (np.asarray(total, np.float64) + prior_weight))


def _reduce(vectors: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """(d, r) orthonormal basis of the users' vectors' main directions (r = min(dims, d)): tastes are sums
    of vectors, computed in this space (a 512-d gather per event would dominate the rebuild at 10 M events)."""
    n, d = vectors.shape
    if d <= dims:
        return np.eye(d)
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(n, size=min(n, 20_000), replace=False)].astype(np.float64)
    w, v = np.linalg.eigh(sample.T @ sample)
    return v[:, np.argsort(-w)[:dims]]


def _tastes(
    vectors: np.ndarray, viewer: np.ndarray, cand: np.ndarray, like: np.ndarray, shrink: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rocchio with negatives, shrunk towards the population's: (n, d) for (n, d) ``vectors``, and the
    population's taste (d,)."""
    n, d = vectors.shape
    lk = like.astype(bool)
    by_viewer = _Sorted(viewer, n)
    s_like = by_viewer.sums(lambda e: vectors[cand[e]], d, lk)
    s_pass = by_viewer.sums(lambda e: vectors[cand[e]], d, ~lk)
    n_like = np.bincount(viewer[lk], minlength=n).astype(np.float64)
    n_pass = np.bincount(viewer[~lk], minlength=n).astype(np.float64)
    if lk.any() and (~lk).any():
        prior = s_like.sum(axis=0) / n_like.sum() - s_pass.sum(axis=0) / n_pass.sum()
    else:
        prior = np.zeros(d)
    own = s_like / np.maximum(n_like, 1)[:, None] - s_pass / np.maximum(n_pass, 1)[:, None]
    eff = np.where((n_like > 0) & (n_pass > 0), 2 * n_like * n_pass / np.maximum(n_like + n_pass, 1), 0.0)
    return shrunk_taste(own, eff, prior, shrink), prior


def shrunk_taste(own: np.ndarray, eff: np.ndarray, prior: np.ndarray, shrink: float) -> np.ndarray:
    """``(eff * own + shrink * prior) / (eff + shrink)`` per row: (n, d) own Rocchio tastes, (n,) effective
    decision counts (harmonic: 2 likes x passes / (likes + passes), 0 without both), (d,) prior."""
    return (eff[:, None] * own + shrink * prior[None, :]) / (eff + shrink)[:, None]


def _factors(
    viewer: np.ndarray, cand: np.ndarray, like: np.ndarray, n: int, cfg: PreferenceConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Latent factors of the interaction matrix M (like = +1, pass = -1, unobserved 0): a truncated SVD
    by randomised power iteration (PureSVD), ``p = U √S``, ``q = V √S`` so ``p_A · q_B`` approximates
    M[A, B]; (n, f) twice. Each product with M is a chunked segment sum over the log, so the cost is
    (events × f) per product; users with few decisions get small factors."""
    f = cfg.factors
    y = np.where(like, 1.0, -1.0)
    if viewer.size == 0:
        return np.zeros((n, f)), np.zeros((n, f))
    by_viewer, by_cand = _Sorted(viewer, n), _Sorted(cand, n)
    width = min(n, f + 8)  # oversampling of the randomised range finder

    def m_times(x: np.ndarray) -> np.ndarray:  # M @ x, x (n, w)
        return by_viewer.sums(lambda e: x[cand[e]] * y[e, None], x.shape[1])

    def mt_times(x: np.ndarray) -> np.ndarray:  # M.T @ x
        return by_cand.sums(lambda e: x[viewer[e]] * y[e, None], x.shape[1])

    rng = np.random.default_rng(cfg.seed)
    q_basis, _ = np.linalg.qr(m_times(rng.standard_normal((n, width))))
    for _ in range(max(1, cfg.als_iterations // 2)):
        z, _ = np.linalg.qr(mt_times(q_basis))
        q_basis, _ = np.linalg.qr(m_times(z))
    bt = mt_times(q_basis)  # (n, w) = (Q.T M).T
    u_small, sing, vt = np.linalg.svd(bt.T, full_matrices=False)  # Q.T M = u_small diag(sing) vt
    k = min(f, sing.size)
    p = np.zeros((n, f))
    q = np.zeros((n, f))
    root = np.sqrt(sing[:k])
    p[:, :k] = (q_basis @ u_small[:, :k]) * root
    q[:, :k] = vt[:k].T * root
    return p, q


def _basis(tastes: np.ndarray, rank: int) -> np.ndarray:
    """(d, r) orthonormal basis of the tastes' main directions (uncentred: scores are dot products)."""
    d = tastes.shape[1]
    r = max(1, min(rank, d))
    gram = tastes.T @ tastes  # (d, d)
    w, v = np.linalg.eigh(gram)
    return v[:, np.argsort(-w)[:r]]


def _side(
    vectors: np.ndarray, viewer: np.ndarray, cand: np.ndarray, like: np.ndarray, cfg: PreferenceConfig
) -> UserSide:
    n = vectors.shape[0]
    rates = _rates(viewer, cand, like, n, cfg.prior_weight)
    space = _reduce(vectors, cfg.taste_dims, cfg.seed)  # (d, r0)
    reduced = (vectors.astype(np.float64) @ space).astype(np.float32)
    taste_r, prior = _tastes(reduced, viewer, cand, like, cfg.taste_shrink)
    basis = _basis(taste_r, cfg.rank)
    pf, qf = _factors(viewer, cand, like, n, cfg)
    return UserSide(
        pickiness=rates["pickiness"],
        appeal=rates["appeal"],
        taste=taste_r @ basis,
        vproj=reduced.astype(np.float64) @ basis,
        viewer_f=pf,
        item_f=qf,
        n_given=rates["given"].astype(np.int64),
        n_received=rates["recv"].astype(np.int64),
        likes_received=rates["recv_like"].astype(np.int64),
        taste_reduced=taste_r,
        space=space,
        basis=basis,
        taste_prior=prior,
    )


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
            np.einsum("ij,ij->i", g(a, "taste")[ia], g(b, "vproj")[ib]),
            np.einsum("ij,ij->i", g(a, "viewer_f")[ia], g(b, "item_f")[ib]),
            np.asarray(photo, np.float64),
            app_a,
            app_a * app_b,
        ]
    )


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iters: int = 25) -> np.ndarray:
    """Newton's method for an L2-regularised logistic regression with intercept; (F,) -> (F + 1,)."""
    xb = np.column_stack([np.ones(len(x)), x])
    w = np.zeros(xb.shape[1])
    w[0] = float(_logit(np.array([y.mean()]))[0])
    reg = l2 * len(x) * np.eye(xb.shape[1])
    reg[0, 0] = 0.0
    for _ in range(iters):
        p = _sigmoid(xb @ w)
        grad = xb.T @ (p - y) + reg @ w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + reg + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-6:
            break
    return w


def _holdout_mask(viewer: np.ndarray, cand: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A pair's hash puts it in the held-out set (fixed per pair and seed, not per call)."""
    h = (viewer.astype(np.uint64) * np.uint64(0x9E3779B1) + cand.astype(np.uint64) * np.uint64(0x85EBCA77)) ^ (
        np.uint64(seed) * np.uint64(0xC2B2AE3D)
    )
    h = (h ^ (h >> np.uint64(15))) * np.uint64(0x2C1B3C6D)
    return (h % np.uint64(10_000)).astype(np.float64) < share * 10_000


def _pair_cos(vectors: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(v_a, v_b) per pair (m,), in blocks (the gathered rows of 10 M pairs would not fit in memory)."""
    out = np.zeros(a.size, np.float64)
    for s in range(0, a.size, _CHUNK):
        out[s : s + _CHUNK] = np.einsum("ij,ij->i", vectors[a[s : s + _CHUNK]], vectors[b[s : s + _CHUNK]])
    return out


def fit_preference(
    user_ids: Sequence[str],
    vectors: np.ndarray,
    viewer: np.ndarray,
    candidate: np.ndarray,
    like: np.ndarray,
    *,
    config: PreferenceConfig | None = None,
    ts: np.ndarray | None = None,
    period_s: float = 1.0,
) -> PreferenceModel:
    """Learn the model from a log: ``vectors`` (n, d) unit float32 rows of ``user_ids``; ``viewer``,
    ``candidate`` (m,) int indices into them, ``like`` (m,) bool (False: a pass). ``ts`` (m,) seconds, when
    given, sets ``periods`` (the log's length in ``period_s``; used by exposure control).

    Raises ``InvalidInput`` for mismatched shapes or indices out of range.
    """
    cfg = config or PreferenceConfig()
    vectors = np.asarray(vectors, np.float32)
    n = len(user_ids)
    viewer = np.asarray(viewer, np.int64)
    candidate = np.asarray(candidate, np.int64)
    like = np.asarray(like, bool)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise InvalidInput(f"preference: vectors must be ({n}, d), got {vectors.shape}")
    if not (viewer.shape == candidate.shape == like.shape):
        raise InvalidInput("preference: viewer, candidate and like must have the same length")
    if viewer.size and (min(viewer.min(), candidate.min()) < 0 or max(viewer.max(), candidate.max()) >= n):
        raise InvalidInput("preference: an event names a user index out of range")
    photo_all = _pair_cos(vectors, viewer, candidate)

    held = _holdout_mask(viewer, candidate, cfg.holdout, cfg.seed)
    f_count = len(FEATURES)
    if held.sum() >= 50 and (~held).sum() >= 50 and 0 < like[held].mean() < 1:
        part = _side(vectors, viewer[~held], candidate[~held], like[~held], cfg)
        x = pair_features(part, viewer[held], part, candidate[held], photo_all[held])
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 1e-9, scale, 1.0)
        weights = _fit_logistic((x - mean) / scale, like[held].astype(np.float64), cfg.l2)
    else:  # too little history to learn weights: the photo alone, as before any log
        mean, scale = np.zeros(f_count), np.ones(f_count)
        weights = np.zeros(f_count + 1)
        weights[1 + FEATURES.index("photo")] = 1.0
    users = _side(vectors, viewer, candidate, like, cfg)
    periods = 1.0
    if ts is not None and len(ts):
        t = np.asarray(ts, np.float64)
        periods = float((t.max() - t.min()) / period_s) + 1.0
    log.info(
        "preference model: %d users, %d events, weights %s",
        n, viewer.size, dict(zip(("bias", *FEATURES), np.round(weights, 3).tolist(), strict=True)),
    )  # fmt: skip
    return PreferenceModel(
        list(user_ids), users, mean, scale, weights, int(viewer.size),
        float(like.mean()) if like.size else 0.5, periods,
    )  # fmt: skip


def probability(features: np.ndarray, mean: np.ndarray, scale: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """P(like) of (m, F) pair features under standardisation ``mean``/``scale`` and ``weights`` (F + 1,)."""
    z = (np.asarray(features, np.float64) - mean) / scale
    return _sigmoid(weights[0] + z @ weights[1:])


def predict(model: PreferenceModel, ia: np.ndarray, ib: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """P(A likes B) for index pairs (m,), with the users' unit ``vectors`` (n, d) for the photo signal."""
    ia, ib = np.asarray(ia, np.int64), np.asarray(ib, np.int64)
    photo = _pair_cos(np.asarray(vectors, np.float32), ia, ib)
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
    }


def served_probabilities(
    shared: dict[str, Any], asker: SideStats, candidates: Sequence[SideStats], photo: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(P(asker likes B), P(B likes asker)) for n candidates, from stored statistics (``SideStats``) and the
    model's shared part (``PreferenceModel.global_payload``); ``photo`` (n,) cos(v_asker, v_B)."""
    n = len(candidates)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    mean, scale = np.asarray(shared["mean"], np.float64), np.asarray(shared["scale"], np.float64)
    w = np.asarray(shared["weights"], np.float64)
    a = _stack([asker])
    b = _stack(list(candidates))
    zero, idx = np.zeros(n, np.int64), np.arange(n)
    fwd = probability(pair_features(a, zero, b, idx, photo), mean, scale, w)
    rev = probability(pair_features(b, idx, a, zero, photo), mean, scale, w)
    return fwd, rev


def served_probabilities_arrays(
    shared: dict[str, Any], asker: dict[str, np.ndarray], candidates: dict[str, np.ndarray], photo: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``served_probabilities`` from stacked statistics (``engine.served_model.ServedModel.side``): the asker
    as one row, the n candidates as n rows; the same arithmetic, without one ``SideStats`` per candidate."""
    n = len(photo)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    mean, scale = np.asarray(shared["mean"], np.float64), np.asarray(shared["scale"], np.float64)
    w = np.asarray(shared["weights"], np.float64)
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
    "FEATURES",
    "PreferenceConfig",
    "PreferenceModel",
    "SideStats",
    "UserSide",
    "auc",
    "congestion_factor",
    "fit_preference",
    "like_logit",
    "pair_features",
    "predict",
    "probability",
    "served_probabilities",
    "served_probabilities_arrays",
    "shrunk_taste",
]
