"""Replay of a real like log: would the engine's score have ranked the liked profiles higher?

For teams with data. The log is a CSV of ``viewer_id, viewed_id, liked`` over users already in the store
(each row one impression and the viewer's decision). For every logged pair two scores are computed from the
store's vectors:

* ``engine``: the reciprocal score of ``recommend()``'s stage 2 (``engine.ranking.rerank``, with the same lookups
  and settings), computed for exactly the logged pairs;
* ``similarity``: one-sided cosine of the two users' mean vectors (what an ANN-only recommender ranks by).

Leakage guard: the decisions being predicted may already sit in the store as like histories (``liked_ids`` /
``taste``). The viewer's taste is therefore its own mean vector (an explicit empty history), and candidates'
stored tastes are ignored, so no logged like can inform the score that is judged against it.

Reported: AUC of each score over all logged pairs (Mann–Whitney, ties count 1/2), and the like rate among
each viewer's top-k logged impressions by score against the overall like rate of the same viewers (those
with more than k logged impressions), with 95 % intervals from a bootstrap over viewers.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.errors import InvalidInput
from engine.schema import USERS, user_point_id
from engine.settings import Settings
from engine.store.base import Store
from evaluation.stats import Estimate, auc, bootstrap_ci, bootstrap_weights, percentile_interval

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


@dataclass(frozen=True)
class LikeLog:
    """Logged impressions: parallel lists of viewer id, viewed id, and whether the viewer liked."""

    viewer: list[str]
    viewed: list[str]
    liked: np.ndarray  # (m,) bool


def read_like_log(path: Path) -> LikeLog:
    """Read ``viewer_id,viewed_id,liked`` (liked: 0/1, true/false, yes/no). Raises ``InvalidInput`` naming
    the file and row of a bad value, or a missing column."""
    viewer: list[str] = []
    viewed: list[str] = []
    liked: list[bool] = []
    try:
        fh = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the like log ({exc.strerror})") from exc
    with fh:
        reader = csv.DictReader(fh)
        cols = {c.strip() for c in reader.fieldnames or ()}
        missing = {"viewer_id", "viewed_id", "liked"} - cols
        if missing:
            raise InvalidInput(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            a, b, lk = row["viewer_id"], row["viewed_id"], row["liked"].lower()
            if not a or not b:
                raise InvalidInput(f"{path}:{line}: empty viewer_id or viewed_id")
            if a == b:
                raise InvalidInput(f"{path}:{line}: viewer_id equals viewed_id ({a!r})")
            if lk in _TRUE:
                liked.append(True)
            elif lk in _FALSE:
                liked.append(False)
            else:
                raise InvalidInput(f"{path}:{line}: liked must be 0/1 or true/false, got {row['liked']!r}")
            viewer.append(a)
            viewed.append(b)
    if not viewer:
        raise InvalidInput(f"{path}: no rows")
    return LikeLog(viewer, viewed, np.array(liked, dtype=bool))


def engine_scores(
    viewer: str, viewed: list[str], *, store: Store, settings: Settings
) -> tuple[np.ndarray, np.ndarray]:
    """The engine's reciprocal score and the one-sided cosine for ``viewer`` against each of ``viewed``.

    Returns two (m,) float64 arrays in the order of ``viewed``; NaN where a viewed user has no usable vector.
    Uses ``engine.recommend.score_candidates`` (``recommend()``'s own stage 2) on these candidates, so the
    score is the one the engine ranks by; see the module docstring for the leakage guard.
    """
    from engine.recommend import score_candidates
    from engine.schema import usable_vector

    # The viewer's and the viewed users' stored like histories are ignored: logged likes must not leak back
    # into the score that is judged on them.
    matches = score_candidates(viewer, viewed, store=store, settings=settings, likes=[], use_stored_tastes=False)
    score = {u: m.score for u, m in matches.items()}
    uniq = list(dict.fromkeys([viewer, *viewed]))
    vectors: dict[str, np.ndarray] = {}
    for p in store.retrieve(USERS, [user_point_id(u) for u in uniq], with_vectors=True):
        v = usable_vector(p)
        if v is not None:
            vectors[str((p.payload or {}).get("user_id"))] = v / max(float(np.linalg.norm(v)), 1e-12)
    own = vectors[viewer]
    sim = {u: float(own @ v) for u, v in vectors.items() if u != viewer}
    eng = np.array([score.get(u, np.nan) for u in viewed], dtype=np.float64)
    one = np.array([sim.get(u, np.nan) for u in viewed], dtype=np.float64)
    return eng, one


@dataclass
class ScoreResult:
    """How well one score ranks the logged likes."""

    score: str
    auc: Estimate
    topk_like_rate: Estimate  # like rate among each eligible viewer's top-k logged impressions by this score
    lift: Estimate  # topk_like_rate / base_like_rate


@dataclass
class ReplayResult:
    log: str
    k: int
    n_pairs: int  # pairs scored (both users in the store with a vector)
    n_skipped: int  # logged pairs with a user not in the store
    n_viewers: int
    n_viewers_topk: int  # viewers with more than k logged impressions (the top-k comparison's population)
    like_rate: float  # over all scored pairs
    base_like_rate: Estimate  # over the top-k comparison's viewers, all their impressions
    scores: list[ScoreResult]

    def table(self) -> str:
        lines = [
            f"Replay of {self.log}: {self.n_pairs} logged pairs scored "
            f"({self.n_skipped} skipped: user not in the store), {self.n_viewers} viewers, "
            f"overall like rate {self.like_rate:.3f}.",
            f"Top-{self.k}: {self.n_viewers_topk} viewers with more than {self.k} logged impressions; "
            f"their overall like rate {self.base_like_rate.fmt()}.",
            "",
            f"| score | AUC | like rate, top-{self.k} by score | lift over their overall rate |",
            "|---|---|---|---|",
        ]
        for s in self.scores:
            lines.append(f"| {s.score} | {s.auc.fmt()} | {s.topk_like_rate.fmt()} | {s.lift.fmt(2)} |")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"


def replay(
    log_path: Path,
    *,
    store: Store,
    settings: Settings,
    k: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
) -> ReplayResult:
    """Score every logged pair with the engine and with one-sided similarity; AUC and top-k like rates.

    Raises ``InvalidInput`` for a bad log, ``k < 1``, or when no logged pair has both users in the store,
    or the scored pairs hold only one outcome (AUC undefined).
    """
    if k < 1:
        raise InvalidInput(f"k: must be at least 1, got {k}")
    like_log = read_like_log(Path(log_path))
    by_viewer: dict[str, list[int]] = {}
    for i, v in enumerate(like_log.viewer):
        by_viewer.setdefault(v, []).append(i)
    eng = np.full(len(like_log.viewer), np.nan)
    one = np.full(len(like_log.viewer), np.nan)
    from engine.errors import NoUserVector, UserNotFound

    unknown_viewers = 0
    for v, rows in by_viewer.items():
        try:
            e, s = engine_scores(v, [like_log.viewed[i] for i in rows], store=store, settings=settings)
        except (UserNotFound, NoUserVector):
            unknown_viewers += 1
            continue
        eng[rows], one[rows] = e, s
    ok = np.isfinite(eng) & np.isfinite(one)
    n_skipped = int((~ok).sum())
    if n_skipped:
        log.warning(
            "replay: %d logged pairs skipped (%d viewers not in the store)", n_skipped, unknown_viewers
        )
    if not ok.any():
        raise InvalidInput(f"{log_path}: no logged pair has both users in the store")
    liked = like_log.liked
    viewers = sorted({like_log.viewer[i] for i in np.flatnonzero(ok)})
    groups = [np.array([i for i in by_viewer[v] if ok[i]]) for v in viewers]

    def pooled_auc(score: np.ndarray) -> float:
        return auc(score[ok], liked[ok])

    # Per viewer with more than k impressions: impressions, likes, and likes among the top-k by each score.
    big = [g for g in groups if g.size > k]
    n_shown = np.array([g.size for g in big], dtype=np.float64)
    n_liked = np.array([liked[g].sum() for g in big], dtype=np.float64)
    weights = bootstrap_weights(len(big), n_boot, seed) if big else None

    def topk_likes(score: np.ndarray) -> np.ndarray:
        return np.array(
            [liked[g[np.argsort(-score[g], kind="stable")[:k]]].sum() for g in big], dtype=np.float64
        )

    def ratio(num: np.ndarray, den: np.ndarray) -> Estimate:
        if weights is None or den.sum() == 0:
            return Estimate(float("nan"), float("nan"), float("nan"))
        with np.errstate(invalid="ignore", divide="ignore"):
            draws = (weights @ num) / (weights @ den)
        return Estimate(float(num.sum() / den.sum()), *percentile_interval(draws))

    base = ratio(n_liked, n_shown)
    results = []
    for name, score in (("engine (reciprocal)", eng), ("one-sided similarity", one)):

        def stat(idx: np.ndarray, score: np.ndarray = score) -> float:
            sel = np.concatenate([groups[i] for i in idx])
            y = liked[sel]
            return auc(score[sel], y) if 0 < y.sum() < y.size else float("nan")

        a = bootstrap_ci(stat, len(groups), n_boot=n_boot, seed=seed)
        a = Estimate(pooled_auc(score), a.lo, a.hi)
        top = topk_likes(score) if big else np.zeros(0)
        top_rate = ratio(top, np.minimum(n_shown, k))
        if weights is not None and n_liked.sum() > 0:
            with np.errstate(invalid="ignore", divide="ignore"):
                lift_draws = ((weights @ top) / (weights @ np.minimum(n_shown, k))) / (
                    (weights @ n_liked) / (weights @ n_shown)
                )
            lift = Estimate(top_rate.value / base.value, *percentile_interval(lift_draws))
        else:
            lift = Estimate(float("nan"), float("nan"), float("nan"))
        results.append(ScoreResult(name, a, top_rate, lift))
    return ReplayResult(
        log=str(log_path),
        k=k,
        n_pairs=int(ok.sum()),
        n_skipped=n_skipped,
        n_viewers=len(viewers),
        n_viewers_topk=len(big),
        like_rate=float(liked[ok].mean()),
        base_like_rate=base,
        scores=results,
    )
