"""Fitting the learned two-sided preference (``engine.learned.model``) on a log of likes and passes.

``fit_preference`` computes every per-user statistic (smoothed like rates, Rocchio tastes in the users' main
directions, SVD factors of the interaction matrix's residuals, twin tastes over those factors) with chunked
segment sums over the log, so memory stays bounded at 10 M events; the weights are fitted by Newton's method
on a held-out fifth of the pairs, with the statistics of the other four fifths, then everything is recomputed
on the whole log for serving.
``like_logit`` and ``shrunk_taste`` are the two formulas the incremental update (``engine.learned.rebuild``) reuses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from engine.errors import InvalidInput
from engine.learned.model import (
    EVENT_CHUNK,
    FEATURES,
    PreferenceConfig,
    PreferenceModel,
    UserSide,
    logit,
    pair_cos,
    pair_features,
    sigmoid,
)

log = logging.getLogger(__name__)


class _Sorted:
    """Events sorted stably by one key (viewer or candidate), for per-user sums without ``np.add.at``."""

    def __init__(self, rows: np.ndarray, n: int) -> None:
        self.order = np.argsort(rows, kind="stable")
        self.rows = rows[self.order]
        self.n = n

    def sums(
        self, src: np.ndarray, x: np.ndarray, sign: np.ndarray | None = None, mask: np.ndarray | None = None
    ) -> np.ndarray:
        """(n, w) float64: ``out[r] = sum of x[src[e]] * sign[e]`` over the events e of row r (where ``mask``);
        ``x`` (n_src, w), ``src``/``sign``/``mask`` (m,).

        Segment sums (``np.add.reduceat``) over the sorted events in blocks of ``EVENT_CHUNK``, one column at a
        time: the column gathered per event comes from an (n_src,) array that stays in cache, and no
        (block, w) array is built. The same additions in the same order as summing the gathered (block, w)
        rows along axis 0 (numpy reduces each column of a segment the same way), so the same bits."""
        order, rows = self.order, self.rows
        if mask is not None:
            keep = mask[order]
            order, rows = order[keep], rows[keep]
        src = src[order]
        sgn = None if sign is None else np.asarray(sign, np.float64)[order]
        xt = np.ascontiguousarray(np.asarray(x, np.float64).T)  # (w, n_src)
        out = np.zeros((self.n, xt.shape[0]), np.float64)
        for a in range(0, rows.size, EVENT_CHUNK):
            rr, ss = rows[a : a + EVENT_CHUNK], src[a : a + EVENT_CHUNK]
            starts = np.r_[0, np.flatnonzero(np.diff(rr)) + 1]
            at = rr[starts]
            for j, col in enumerate(xt):
                vals = col[ss]
                if sgn is not None:
                    vals *= sgn[a : a + EVENT_CHUNK]
                out[at, j] += np.add.reduceat(vals, starts)
        return out


def _rates(viewer: np.ndarray, cand: np.ndarray, like: np.ndarray, n: int, m: float) -> dict[str, np.ndarray]:
    p0 = float(like.mean()) if like.size else 0.5
    given = np.bincount(viewer, minlength=n).astype(np.float64)
    given_like = np.bincount(viewer, weights=like, minlength=n)
    recv = np.bincount(cand, minlength=n).astype(np.float64)
    recv_like = np.bincount(cand, weights=like, minlength=n)
    return {
        "p0": np.array(p0),
        "pickiness": logit((given_like + m * p0) / (given + m)),
        "appeal": logit((recv_like + m * p0) / (recv + m)),
        "given": given,
        "recv": recv,
        "recv_like": recv_like,
    }


def like_logit(likes: np.ndarray, total: np.ndarray, p0: float, prior_weight: float) -> np.ndarray:
    """``logit((likes + m p0) / (total + m))``: a like rate smoothed towards ``p0`` with ``m`` pseudo-decisions
    (pickiness from decisions given, appeal from decisions received), as the full fit computes it."""
    return logit((np.asarray(likes, np.float64) + prior_weight * p0) / (np.asarray(total, np.float64) + prior_weight))


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
    s_like = by_viewer.sums(cand, vectors, mask=lk)
    s_pass = by_viewer.sums(cand, vectors, mask=~lk)
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
    viewer: np.ndarray, cand: np.ndarray, y: np.ndarray, n: int, cfg: PreferenceConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Latent factors of the interaction matrix M (an observed entry is ``y`` of the event, (m,); unobserved
    0): a truncated SVD by randomised power iteration (PureSVD), ``p = U √S``, ``q = V √S`` so ``p_A · q_B``
    approximates M[A, B]; (n, f) twice. Each product with M is a chunked segment sum over the log, so the cost
    is (events × f) per product; users with few decisions get small factors."""
    f = cfg.factors
    if viewer.size == 0:
        return np.zeros((n, f)), np.zeros((n, f))
    by_viewer, by_cand = _Sorted(viewer, n), _Sorted(cand, n)
    width = min(n, f + 8)  # oversampling of the randomised range finder

    def m_times(x: np.ndarray) -> np.ndarray:  # M @ x, x (n, w)
        return by_viewer.sums(cand, x, y)

    def mt_times(x: np.ndarray) -> np.ndarray:  # M.T @ x
        return by_cand.sums(viewer, x, y)

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


def _reduced(vectors: np.ndarray, cfg: PreferenceConfig) -> tuple[np.ndarray, np.ndarray]:
    """The users' reduced space (d, r0) and their vectors in it (n, r0) float32: they depend on the vectors
    only, so both fits of a rebuild (held-out and full) share them."""
    space = _reduce(vectors, cfg.taste_dims, cfg.seed)
    return space, (vectors.astype(np.float64) @ space).astype(np.float32)


def _side(
    vectors: np.ndarray,
    viewer: np.ndarray,
    cand: np.ndarray,
    like: np.ndarray,
    cfg: PreferenceConfig,
    reduced_space: tuple[np.ndarray, np.ndarray] | None = None,
) -> UserSide:
    n = vectors.shape[0]
    rates = _rates(viewer, cand, like, n, cfg.prior_weight)
    space, reduced = reduced_space if reduced_space is not None else _reduced(vectors, cfg)
    taste_r, prior = _tastes(reduced, viewer, cand, like, cfg.taste_shrink)
    basis = _basis(taste_r, cfg.rank)
    # The SVD factors what pickiness and appeal do not explain: like minus the like rate they predict.
    p0 = float(rates["p0"])
    base = sigmoid(rates["pickiness"][viewer] + rates["appeal"][cand] - logit(np.array([p0]))[0])
    pf, qf = _factors(viewer, cand, like.astype(np.float64) - base, n, cfg)
    # Twin taste: Rocchio over the viewer factors (the tastes) of the people decided on, shrunk the same way.
    twin, _ = _tastes(pf, viewer, cand, like, cfg.taste_shrink)
    return UserSide(
        pickiness=rates["pickiness"],
        appeal=rates["appeal"],
        taste=taste_r @ basis,
        vproj=reduced.astype(np.float64) @ basis,
        viewer_f=pf,
        item_f=qf,
        twin_f=twin,
        n_given=rates["given"].astype(np.int64),
        n_received=rates["recv"].astype(np.int64),
        likes_received=rates["recv_like"].astype(np.int64),
        taste_reduced=taste_r,
        space=space,
        basis=basis,
        taste_prior=prior,
    )


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iters: int = 25) -> np.ndarray:
    """Newton's method for an L2-regularised logistic regression with intercept; (F,) -> (F + 1,)."""
    xb = np.column_stack([np.ones(len(x)), x])
    w = np.zeros(xb.shape[1])
    w[0] = float(logit(np.array([y.mean()]))[0])
    reg = l2 * len(x) * np.eye(xb.shape[1])
    reg[0, 0] = 0.0
    for _ in range(iters):
        p = sigmoid(xb @ w)
        grad = xb.T @ (p - y) + reg @ w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + reg + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-6:
            break
    return w


def _holdout_mask(viewer: np.ndarray, cand: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A pair's hash puts it in the held-out set (fixed per pair and seed, not per call). The pair is unordered:
    A's decision on B and B's on A are held out together, so the mirrored features (``collab_back``,
    ``twin_taste_back``), which read B's side, never see the reverse decision of a pair they are fitted on."""
    viewer, cand = np.minimum(viewer, cand), np.maximum(viewer, cand)
    h = (viewer.astype(np.uint64) * np.uint64(0x9E3779B1) + cand.astype(np.uint64) * np.uint64(0x85EBCA77)) ^ (
        np.uint64(seed) * np.uint64(0xC2B2AE3D)
    )
    h = (h ^ (h >> np.uint64(15))) * np.uint64(0x2C1B3C6D)
    return (h % np.uint64(10_000)).astype(np.float64) < share * 10_000


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
    held = _holdout_mask(viewer, candidate, cfg.holdout, cfg.seed)
    reduced_space = _reduced(vectors, cfg)
    f_count = len(FEATURES)
    if held.sum() >= 50 and (~held).sum() >= 50 and 0 < like[held].mean() < 1:
        part = _side(vectors, viewer[~held], candidate[~held], like[~held], cfg, reduced_space)
        # Only the held-out pairs' photo cosines are used: a fifth of the 512-d gathers of every pair.
        photo = pair_cos(vectors, viewer[held], candidate[held])
        x = pair_features(part, viewer[held], part, candidate[held], photo)
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 1e-9, scale, 1.0)
        weights = _fit_logistic((x - mean) / scale, like[held].astype(np.float64), cfg.l2)
    else:  # too little history to learn weights: the photo alone, as before any log
        mean, scale = np.zeros(f_count), np.ones(f_count)
        weights = np.zeros(f_count + 1)
        weights[1 + FEATURES.index("photo")] = 1.0
    users = _side(vectors, viewer, candidate, like, cfg, reduced_space)
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


__all__ = ["fit_preference", "like_logit", "shrunk_taste"]
