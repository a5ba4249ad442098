"""Offline like-rate simulation: does the recommender find pairs who would like each other?

A synthetic population (``make_demo_data``: photos on disk, latent traits in ``truth.json``) goes through the
real pipeline — photos are embedded by the encoder and ingested into the store by ``run_ingest``, and the
engine's recommendations come from ``recommend()`` against that store. Decisions come from the hidden traits
only (never from the vectors), under one of two *worlds*:

``similarity`` (the product's hypothesis)
    People like partners whose looks and attractiveness are close to their own::

        logit P(i likes j) = c_g + w · z(cos(looks_i, looks_j)) − w · z(|q_i − q_j|)

    ``q`` is attractiveness as a percentile within one's gender, ``z`` standardises over compatible pairs, and
    ``w = b_g · sd(r_g) / √2`` gives the two terms together the strength (log-odds per standard deviation)
    that partner attractiveness has in the speed-dating data — as structured as the real world, but by
    similarity instead of by a shared ranking.

``aspiration`` (Bruch & Newman, Science Advances 2018)
    Everyone prefers more attractive partners (the speed-dating curve), people aim about 25 % above their own
    desirability, and the likelihood of saying yes falls as the partner falls further below that aim::

        logit P(i likes j) = c_g + b_g · r_g(q_j) − λ · max(0, min(1, 1.25 · q_i) − q_j)

    ``r_g(q)`` is the rating at percentile ``q`` of the ratings raters of gender ``g`` gave in the data,
    ``b_g`` the data's slope; the 25 % is applied on the percentile scale (an approximation: Bruch & Newman
    measure desirability by a PageRank-like score) and ``λ`` (``gap_penalty``) is a setting, not fitted.

In both worlds the intercept ``c_g`` of each rater gender is solved so that the like probability averaged
over all compatible pairs equals the speed-dating like rate (0.365 women, 0.474 men; other genders the
pooled 0.420): random pairs like each other as often as the people in the data did.

Strategies, run in the same simulation on the same population, each showing every user ``k`` not yet shown
candidates per round for ``R`` rounds: ``random`` (within the compatibility filter — the "before"),
``popularity`` (most attractive first, by the hidden attractiveness: an upper bound for a popularity ranking
that a real app estimates from like counts), ``similarity`` (one-sided: the store's nearest neighbours of the
viewer's mean vector under the compatibility filter — ANN only), ``engine`` (``recommend()`` excluding those
already shown; with ``engine_likes`` also given the viewer's likes so far), ``engine_capped`` (the engine,
skipping anyone already shown ``exposure_cap`` times this round) and ``oracle`` (ranks by the true mutual-like
probability ``P(i→j) · P(j→i)``: the ceiling).

A shown pair's outcome is fixed by a counter-based uniform ``u(i, j)`` of the seed (``i`` likes ``j`` iff
``u(i, j) < P(i→j)``; the reply is ``u(j, i) < P(j→i)``), so every strategy meets the same randomness:
two strategies that show the same pair get the same outcome (common random numbers).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine.errors import InvalidInput
from engine.schema import parse_seeking
from engine.settings import Settings
from evaluation.calibration import Calibration, CalibrationData, fit_calibration, sigmoid, solve_shift
from evaluation.stats import Estimate, bootstrap_weights, gini_rows, percentile_interval

log = logging.getLogger(__name__)

WORLDS: tuple[str, ...] = ("similarity", "aspiration")
STRATEGIES: tuple[str, ...] = ("random", "popularity", "similarity", "engine", "engine_capped", "oracle")
STRATEGY_LABELS: dict[str, str] = {
    "random": "random (before)",
    "popularity": "most attractive first",
    "similarity": "one-sided similarity (ANN)",
    "engine": "engine (reciprocal rerank)",
    "engine_capped": "engine + exposure cap",
    "oracle": "oracle (true P, ceiling)",
}


# --------------------------------------------------------------------------------------------------------
# Population
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Population:
    """Users with demographics (from metadata.csv) and hidden traits (from truth.json), index-aligned."""

    user_ids: list[str]
    gender: np.ndarray  # (n,) str
    age: np.ndarray  # (n,) int
    seeking: list[tuple[str, ...]]
    age_min: np.ndarray  # (n,) int; a missing bound is the settings' min_age
    age_max: np.ndarray  # (n,) int; a missing bound is the settings' max_age
    attractiveness: np.ndarray  # (n,) float in [0, 1]
    looks: np.ndarray  # (n, D) float64 unit vectors

    @property
    def n(self) -> int:
        return len(self.user_ids)

    @staticmethod
    def user_ids_in(root: Path) -> list[str]:
        """The user ids of ``root/metadata.csv`` (the demo-data layout), in file order, without repeats."""
        path = root / "metadata.csv"
        if not path.is_file():
            raise InvalidInput(f"{path}: not found")
        with path.open(newline="", encoding="utf-8") as fh:
            return list(dict.fromkeys((row.get("user_id") or "").strip() for row in csv.DictReader(fh)))

    @classmethod
    def from_dir(cls, root: Path, settings: Settings, *, only: set[str] | None = None) -> Population:
        """Read ``root/metadata.csv`` and ``root/truth.json`` (the demo-data layout); keep users in ``only``.

        Raises ``InvalidInput`` naming the file and row of a bad or missing value.
        """
        meta_path, truth_path = root / "metadata.csv", root / "truth.json"
        for p in (meta_path, truth_path):
            if not p.is_file():
                raise InvalidInput(f"{p}: not found (make the population with `matcher make-demo-data`)")
        try:
            truth = json.loads(truth_path.read_text(encoding="utf-8"))["users"]
        except (ValueError, KeyError) as exc:
            raise InvalidInput(f"{truth_path}: not a truth.json with a 'users' object ({exc})") from exc
        rows: dict[str, dict[str, str]] = {}
        with meta_path.open(newline="", encoding="utf-8") as fh:
            for line, row in enumerate(csv.DictReader(fh), start=2):
                uid = (row.get("user_id") or "").strip()
                if not uid:
                    raise InvalidInput(f"{meta_path}:{line}: empty user_id")
                rows.setdefault(uid, row | {"_line": str(line)})
        ids = sorted(u for u in rows if only is None or u in only)
        if not ids:
            raise InvalidInput(
                f"{meta_path}: no users" + (" that are in the store" if only is not None else "")
            )
        gender, age, seeking, amin, amax, attr, looks = [], [], [], [], [], [], []
        for uid in ids:
            row = rows[uid]
            where = f"{meta_path}:{row['_line']}"
            if uid not in truth:
                raise InvalidInput(f"{truth_path}: user {uid!r} (in metadata.csv) has no truth entry")
            t = truth[uid]
            try:
                g = str(row["gender"]).strip().lower()
                gender.append(g)
                age.append(int(row["age"]))
                seeking.append(tuple(parse_seeking(row.get("seeking"), g, settings.genders)))
                amin.append(int(row["age_min"]) if (row.get("age_min") or "").strip() else settings.min_age)
                amax.append(int(row["age_max"]) if (row.get("age_max") or "").strip() else settings.max_age)
                attr.append(float(t["attractiveness"]))
                looks.append(np.asarray(t["looks"], dtype=np.float64))
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidInput(f"{where} / truth of {uid}: {exc}") from exc
        lk = np.vstack(looks)
        lk /= np.maximum(np.linalg.norm(lk, axis=1, keepdims=True), 1e-12)
        return cls(
            user_ids=ids,
            gender=np.array(gender, dtype=object),
            age=np.array(age),
            seeking=seeking,
            age_min=np.array(amin),
            age_max=np.array(amax),
            attractiveness=np.array(attr),
            looks=lk,
        )

    def compatible(self) -> np.ndarray:
        """(n, n) bool: both sides accept each other, never oneself — ``engine.compatibility``'s filter."""
        genders = sorted(set(self.gender.tolist()) | {g for s in self.seeking for g in s})
        seeks = np.array([[g in s for g in genders] for s in self.seeking])  # (n, G)
        gidx = np.array([genders.index(g) for g in self.gender])
        accepts_gender = seeks[:, gidx]  # [i, j]: i seeks j's gender
        accepts_age = (self.age[None, :] >= self.age_min[:, None]) & (
            self.age[None, :] <= self.age_max[:, None]
        )
        accepts = accepts_gender & accepts_age
        out = accepts & accepts.T
        np.fill_diagonal(out, False)
        return out

    def percentile(self) -> np.ndarray:
        """(n,) attractiveness as a mid-rank percentile in (0, 1) within each user's own gender."""
        q = np.empty(self.n)
        for g in set(self.gender.tolist()):
            idx = np.flatnonzero(self.gender == g)
            order = np.argsort(self.attractiveness[idx], kind="stable")
            ranks = np.empty(idx.size)
            ranks[order] = np.arange(idx.size)
            q[idx] = (ranks + 0.5) / idx.size
        return q


# --------------------------------------------------------------------------------------------------------
# Decision worlds
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorldSettings:
    """Parameters of the decision worlds that are chosen, not fitted (see the module docstring)."""

    aim_up: float = 0.25  # aspiration: aim this far above one's own percentile (Bruch & Newman's ~25 %)
    gap_penalty: float = 2.0  # aspiration: log-odds lost per unit of percentile below one's aim
    similarity_strength: float | None = (
        None  # similarity: log-odds per sd; None = the data's attractiveness effect
    )


@dataclass
class World:
    """``p[i, j] = P(i likes j)`` for every pair (float64, (n, n)), and what calibrated it."""

    name: str
    p: np.ndarray
    intercepts: dict[str, float]
    targets: dict[str, float]  # the data's like rate per rater gender
    random_pair_like: dict[str, float]  # mean p over compatible pairs per rater gender (= targets)
    random_pair_mutual: float  # mean p_ij p_ji over compatible pairs

    def mutual(self) -> np.ndarray:
        return self.p * self.p.T


def _standardise(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    sel = x[mask]
    sd = float(sel.std()) if sel.size else 1.0
    return (x - (float(sel.mean()) if sel.size else 0.0)) / (sd if sd > 0 else 1.0)


def build_world(
    name: str, pop: Population, compat: np.ndarray, cal: Calibration, ws: WorldSettings | None = None
) -> World:
    """Like probabilities of world ``name`` on ``pop``, calibrated to the data's rates over compatible pairs.

    Raises ``InvalidInput`` for an unknown world. Raters of a gender without any compatible pair keep P = 0
    (they are never shown anyone) and are left out of ``intercepts``.
    """
    ws = ws or WorldSettings()
    q = pop.percentile()
    base = np.zeros((pop.n, pop.n))
    genders = sorted(set(pop.gender.tolist()))
    if name == "similarity":
        look_z = _standardise(pop.looks @ pop.looks.T, compat)
        gap_z = _standardise(np.abs(q[:, None] - q[None, :]), compat)
        for g in genders:
            rows = pop.gender == g
            fit = cal.for_gender(g)
            strength = ws.similarity_strength
            if strength is None:
                strength = fit.slope * float(fit.ratings.std())
            w = strength / math.sqrt(2.0)
            base[rows] = w * look_z[rows] - w * gap_z[rows]
    elif name == "aspiration":
        aim = np.minimum(1.0, (1.0 + ws.aim_up) * q)
        below_aim = np.maximum(0.0, aim[:, None] - q[None, :])
        for g in genders:
            rows = pop.gender == g
            fit = cal.for_gender(g)
            rating = fit.rating_at(q)  # how raters of gender g would rate each partner
            base[rows] = fit.slope * rating[None, :] - ws.gap_penalty * below_aim[rows]
    else:
        raise InvalidInput(f"world: {name!r} is not one of {', '.join(WORLDS)}")

    p = np.zeros_like(base)
    intercepts, targets, achieved = {}, {}, {}
    for g in genders:
        rows = pop.gender == g
        block, mask = base[rows], compat[rows]
        vals = block[mask]
        if vals.size == 0:
            # No one these raters could be shown (e.g. a lone non-binary user): nothing to calibrate.
            log.warning("world %s: raters of gender %r have no compatible pair", name, g)
            continue
        target = cal.for_gender(g).like_rate
        def mean_prob(shift: float, v: np.ndarray = vals) -> float:
            return float(sigmoid(v + shift).mean())

        c = solve_shift(mean_prob, target)
        p[rows] = sigmoid(block + c)
        intercepts[g], targets[g] = c, target
        achieved[g] = float(p[rows][mask].mean())
    np.fill_diagonal(p, 0.0)
    mutual = float((p * p.T)[compat].mean()) if compat.any() else float("nan")
    return World(name, p, intercepts, targets, achieved, mutual)


def world_curve(
    world: World, pop: Population, compat: np.ndarray, cal: Calibration
) -> dict[str, list[tuple[int, float, int]]]:
    """Mean P(i likes j) over compatible pairs by j's rounded rating on the data's scale, per rater gender
    (women and men): how the world's decisions depend on partner attractiveness, to set beside the data."""
    q = pop.percentile()
    out: dict[str, list[tuple[int, float, int]]] = {}
    for g in ("female", "male"):
        rows = np.flatnonzero(pop.gender == g)
        if rows.size == 0:
            continue
        r = np.clip(np.round(cal.for_gender(g).rating_at(q)), 1, 10).astype(int)
        i, j = np.nonzero(compat[rows])
        pij = world.p[rows[i], j]
        bins = r[j]
        out[g] = [
            (int(b), float(pij[bins == b].mean()), int((bins == b).sum())) for b in np.unique(bins)
        ]
    return out


def pair_uniform(seed: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Counter-based uniforms in [0, 1) for ordered pairs (i, j): a splitmix64 hash of (seed, i, j).

    The same pair gets the same number in every strategy and every world; no generator state is shared,
    so the order strategies run in cannot change an outcome.
    """
    i = np.asarray(i, dtype=np.uint64)
    j = np.asarray(j, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        x = x + (i << np.uint64(32)) + j + np.uint64(0x632BE59BD9B4E019)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# --------------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------------
class Strategy(Protocol):
    """Picks up to ``k`` candidates (population indices, best first) for ``viewer``."""

    name: str

    def start_round(self, round_index: int) -> None: ...

    def pick(self, viewer: int, k: int, exclude: set[int], liked: Sequence[int]) -> list[int]: ...


class ScoreStrategy:
    """Top-``k`` compatible, not yet shown candidates by a score row ``score(viewer) -> (n,)``."""

    def __init__(self, name: str, compat: np.ndarray, score: Callable[[int, int], Any]) -> None:
        self.name = name
        self._compat = compat
        self._score = score
        self._round = 0

    def start_round(self, round_index: int) -> None:
        self._round = round_index

    def pick(self, viewer: int, k: int, exclude: set[int], liked: Sequence[int]) -> list[int]:
        ok = self._compat[viewer].copy()
        if exclude:
            ok[list(exclude)] = False
        cand = np.flatnonzero(ok)
        if cand.size == 0:
            return []
        s = self._score(viewer, self._round)[cand]
        take = min(k, cand.size)
        top = np.argpartition(-s, take - 1)[:take]
        top = top[np.argsort(-s[top], kind="stable")]
        return cand[top].tolist()


def random_strategy(compat: np.ndarray, seed: int) -> ScoreStrategy:
    """Uniformly random within the filter; seeded per (seed, round, viewer)."""
    n = compat.shape[0]
    return ScoreStrategy("random", compat, lambda v, r: np.random.default_rng([seed, 0x5EED, r, v]).random(n))


def popularity_strategy(compat: np.ndarray, pop: Population) -> ScoreStrategy:
    """Most attractive first, by the hidden attractiveness (the same order for every viewer)."""
    attractiveness = np.asarray(pop.attractiveness, dtype=np.float64)
    return ScoreStrategy("popularity", compat, lambda v, r: attractiveness)


def oracle_strategy(compat: np.ndarray, world: World) -> ScoreStrategy:
    mutual = world.mutual()
    return ScoreStrategy("oracle", compat, lambda v, r: mutual[v])


class ExposureCapped:
    """Wraps a strategy: skips anyone already shown ``cap`` times in this round (counts reset each round).

    Asks the wrapped strategy for ``fetch * k`` candidates so the cap can be met without leaving a viewer
    short; a viewer gets fewer than ``k`` only when more than that many are all at the cap.
    """

    def __init__(self, name: str, base: Strategy, cap: int, n: int, fetch: int = 2) -> None:
        if cap < 1:
            raise InvalidInput(f"exposure_cap: must be at least 1, got {cap}")
        self.name = name
        self._base = base
        self._cap = cap
        self._fetch = fetch
        self._count = np.zeros(n, dtype=np.int64)

    def start_round(self, round_index: int) -> None:
        self._base.start_round(round_index)
        self._count[:] = 0

    def pick(self, viewer: int, k: int, exclude: set[int], liked: Sequence[int]) -> list[int]:
        out = [
            j for j in self._base.pick(viewer, self._fetch * k, exclude, liked) if self._count[j] < self._cap
        ]
        out = out[:k]
        self._count[out] += 1
        return out


class StoreSimilarity:
    """One-sided similarity: the store's nearest neighbours of the viewer's mean vector (ANN, no rerank),
    under the engine's own compatibility filter.

    The ranking never changes (no likes, no rerank), so one query per viewer for ``depth`` neighbours is
    served in slices: the next ``k`` not yet shown are what a query excluding the shown ones returns.
    """

    name = "similarity"
    uses_likes = False

    def __init__(self, store: Any, pop: Population, depth: int = 0) -> None:
        self._depth = depth
        self._ranked: dict[int, list[int]] = {}
        from engine.compatibility import Profile, compatible_filter
        from engine.schema import USERS, user_point_id

        self._store = store
        self._pop = pop
        self._index = {u: i for i, u in enumerate(pop.user_ids)}
        self._filter = compatible_filter
        self._users = USERS
        points = store.retrieve(USERS, [user_point_id(u) for u in pop.user_ids], with_vectors=True)
        self._vec: dict[str, np.ndarray] = {}
        self._profile: dict[str, Any] = {}
        for pt in points:
            uid = str(pt.payload["user_id"])
            self._vec[uid] = np.asarray(pt.vector, dtype=np.float32)
            self._profile[uid] = Profile.from_payload(pt.payload, where=f"users point of {uid}")
        missing = [u for u in pop.user_ids if u not in self._vec]
        if missing:
            raise InvalidInput(
                f"similarity: {len(missing)} users have no vector in the store (e.g. {missing[0]})"
            )

    def start_round(self, round_index: int) -> None:
        pass

    def pick(self, viewer: int, k: int, exclude: set[int], liked: Sequence[int]) -> list[int]:
        from engine.store import Query

        ranked = self._ranked.get(viewer)
        if ranked is None or sum(j not in exclude for j in ranked) < k:
            uid = self._pop.user_ids[viewer]
            flt = self._filter(self._profile[uid], exclude=[self._pop.user_ids[j] for j in exclude])
            query = Query(
                vector=self._vec[uid], limit=max(k, self._depth), filter=flt, with_payload=("user_id",)
            )
            hits = self._store.query(self._users, query)
            ranked = [
                self._index[str(h.payload["user_id"])]
                for h in hits
                if h.payload and h.payload["user_id"] in self._index
            ]
            self._ranked[viewer] = ranked
        return [j for j in ranked if j not in exclude][:k]


class EngineStrategy:
    """``engine.recommend.recommend()`` against the store; with ``use_likes`` it passes the viewer's likes so
    far (``likes=``), which blends them into the viewer's taste. Without, it ranks from the photos alone and
    its picks do not depend on the decision world."""

    def __init__(
        self, name: str, store: Any, settings: Settings, pop: Population, *, use_likes: bool = False
    ) -> None:
        from engine.recommend import recommend

        self.name = name
        self.uses_likes = use_likes
        self._recommend = recommend
        self._store = store
        self._settings = settings
        self._pop = pop
        self._index = {u: i for i, u in enumerate(pop.user_ids)}

    def start_round(self, round_index: int) -> None:
        pass

    def pick(self, viewer: int, k: int, exclude: set[int], liked: Sequence[int]) -> list[int]:
        ids = self._pop.user_ids
        matches = self._recommend(
            ids[viewer],
            k=k,
            exclude=[ids[j] for j in exclude],
            likes=[ids[j] for j in liked] if self.uses_likes else None,
            store=self._store,
            settings=self._settings,
        )
        return [self._index[m.user_id] for m in matches if m.user_id in self._index]


class Memo:
    """Wraps a strategy whose picks ignore the decisions (no likes): the picks of the first world are
    replayed in the next ones, where the calls come in the same order. Saves the store round trips."""

    def __init__(self, base: Strategy) -> None:
        self.name = base.name
        self._base = base
        self._round = 0
        self._memo: dict[tuple[int, int], list[int]] = {}

    def start_round(self, round_index: int) -> None:
        self._round = round_index
        self._base.start_round(round_index)

    def pick(self, viewer: int, k: int, exclude: set[int], liked: Sequence[int]) -> list[int]:
        key = (self._round, viewer)
        if key not in self._memo:
            self._memo[key] = self._base.pick(viewer, k, exclude, liked)
        return list(self._memo[key])


# --------------------------------------------------------------------------------------------------------
# Running the rounds
# --------------------------------------------------------------------------------------------------------
@dataclass
class Impressions:
    """Every recommendation one strategy made: viewer, candidate, round, and the two decisions."""

    viewer: np.ndarray  # (m,) int
    candidate: np.ndarray  # (m,) int
    round: np.ndarray  # (m,) int
    like: np.ndarray  # (m,) bool: the viewer likes the candidate
    back: np.ndarray  # (m,) bool: the candidate likes the viewer
    shortfall: int  # recommendations missing (a viewer got fewer than k)
    incompatible: int = 0  # impressions outside the compatibility filter (must stay 0; a filter mismatch)

    @property
    def mutual(self) -> np.ndarray:
        return self.like & self.back


def run_rounds(
    strategies: Sequence[Strategy],
    world: World,
    *,
    rounds: int,
    k: int,
    seed: int,
    compat: np.ndarray | None = None,
    progress: bool = False,
) -> dict[str, Impressions]:
    """Each round every user gets up to ``k`` not-yet-shown candidates from each strategy; decisions follow.

    ``compat`` (n, n) bool, when given, counts impressions outside the filter (``Impressions.incompatible``).

    Viewers are served in a random order per round (seeded, the same for every strategy), which matters
    only for the exposure cap. Raises ``InvalidInput`` if ``rounds`` or ``k`` is below 1.
    """
    if rounds < 1 or k < 1:
        raise InvalidInput(f"rounds and k must be at least 1 (got {rounds}, {k})")
    n = world.p.shape[0]
    out: dict[str, Impressions] = {}
    for strat in strategies:
        shown: list[set[int]] = [set() for _ in range(n)]
        liked: list[list[int]] = [[] for _ in range(n)]
        rec_v: list[int] = []
        rec_c: list[int] = []
        rec_r: list[int] = []
        shortfall = 0
        steps: Any = range(rounds)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"{world.name}/{strat.name}", unit="round")
        for r in steps:
            strat.start_round(r)
            order = np.random.default_rng([seed, 0x0DE5, r]).permutation(n)
            for v in order.tolist():
                picks = strat.pick(v, k, shown[v], liked[v])
                if len(set(picks)) != len(picks) or shown[v].intersection(picks) or v in picks:
                    raise InvalidInput(
                        f"strategy {strat.name}: repeated or self recommendation for viewer {v}"
                    )
                shortfall += k - len(picks)
                if not picks:
                    continue
                pj = np.asarray(picks)
                likes = pair_uniform(seed, np.full(pj.size, v), pj) < world.p[v, pj]
                shown[v].update(picks)
                liked[v].extend(pj[likes].tolist())
                rec_v.extend([v] * len(picks))
                rec_c.extend(picks)
                rec_r.extend([r] * len(picks))
        vv, cc = np.asarray(rec_v, dtype=np.int64), np.asarray(rec_c, dtype=np.int64)
        like = pair_uniform(seed, vv, cc) < world.p[vv, cc]
        back = pair_uniform(seed, cc, vv) < world.p[cc, vv]
        bad = int((~compat[vv, cc]).sum()) if compat is not None and vv.size else 0
        if bad:
            log.warning("strategy %s: %d impressions outside the compatibility filter", strat.name, bad)
        out[strat.name] = Impressions(vv, cc, np.asarray(rec_r, dtype=np.int64), like, back, shortfall, bad)
    return out


# --------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------
METRICS: tuple[str, ...] = (
    "like_rate",
    "mutual_rate",
    "matches_per_user",
    "precision_viewer",
    "precision_candidate",
    "coverage",
    "gini",
)
METRIC_LABELS: dict[str, str] = {
    "like_rate": "one-way like rate",
    "mutual_rate": "mutual-match rate",
    "matches_per_user": "mutual matches per user",
    "precision_viewer": "precision@k (viewer likes)",
    "precision_candidate": "precision@k (candidate likes back)",
    "coverage": "coverage",
    "gini": "exposure Gini",
}


@dataclass
class StrategyResult:
    """One strategy's metrics in one world; every ``Estimate`` has a 95 % viewer-bootstrap interval."""

    strategy: str
    n_impressions: int
    shortfall: int
    incompatible: int
    metrics: dict[str, Estimate]
    lift: dict[str, Estimate]  # like_rate and mutual_rate over random's
    oracle_share: dict[str, Estimate]  # (s - random) / (oracle - random), for like_rate and mutual_rate


def _draws(
    imp: Impressions, n: int, weights: np.ndarray, exposure_idx: np.ndarray
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Point values and bootstrap draws (b,) of every metric.

    Rates and precisions resample viewers (``weights``, (b, n) counts): one viewer's impressions are
    correlated. Coverage and Gini describe how exposure is spread over the users shown, so they resample
    users as the exposed unit (``exposure_idx``, (b, n) indices): resampling viewers instead would drop a
    third of the viewers from every draw and bias both downward.
    """
    shown = np.bincount(imp.viewer, minlength=n).astype(np.float64)
    likes = np.bincount(imp.viewer, weights=imp.like, minlength=n)
    backs = np.bincount(imp.viewer, weights=imp.back, minlength=n)
    mutual = np.bincount(imp.viewer, weights=imp.mutual, minlength=n)
    has = (shown > 0).astype(np.float64)
    prec_v = np.where(shown > 0, likes / np.maximum(shown, 1), 0.0)
    prec_c = np.where(shown > 0, backs / np.maximum(shown, 1), 0.0)
    point: dict[str, float] = {}
    draws: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for key, num, den in (
            ("like_rate", likes, shown),
            ("mutual_rate", mutual, shown),
            ("matches_per_user", mutual, np.ones(n)),
            ("precision_viewer", prec_v * has, has),
            ("precision_candidate", prec_c * has, has),
        ):
            point[key] = float(num.sum() / den.sum()) if den.sum() > 0 else float("nan")
            draws[key] = (weights @ num) / (weights @ den)
    exposure = np.bincount(imp.candidate, minlength=n).astype(np.float64)
    point["coverage"] = float((exposure > 0).mean())
    point["gini"] = float(gini_rows(exposure[None, :])[0])
    resampled = exposure[exposure_idx]
    draws["coverage"] = (resampled > 0).mean(axis=1)
    draws["gini"] = gini_rows(resampled)
    return point, draws


def evaluate(
    impressions: dict[str, Impressions], n: int, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> list[StrategyResult]:
    """Metrics, intervals, lift over ``random`` and share of the ``oracle``'s lift, for every strategy.

    One set of viewer-bootstrap weights serves all strategies, so lifts and shares have paired intervals.
    """
    weights = bootstrap_weights(n, n_boot, seed)
    exposure_idx = np.random.default_rng([seed, 0xE7]).integers(0, n, size=(n_boot, n))
    computed = {name: _draws(imp, n, weights, exposure_idx) for name, imp in impressions.items()}
    results = []
    for name, imp in impressions.items():
        point, draws = computed[name]
        metrics = {}
        for key in METRICS:
            lo, hi = percentile_interval(draws[key], level)
            metrics[key] = Estimate(point[key], lo, hi)
        lift: dict[str, Estimate] = {}
        share: dict[str, Estimate] = {}
        for key in ("like_rate", "mutual_rate"):
            if "random" in computed:
                rp, rd = computed["random"][0][key], computed["random"][1][key]
                with np.errstate(invalid="ignore", divide="ignore"):
                    lift[key] = Estimate(
                        point[key] / rp if rp else float("nan"), *percentile_interval(draws[key] / rd, level)
                    )
                if "oracle" in computed:
                    op, od = computed["oracle"][0][key], computed["oracle"][1][key]
                    with np.errstate(invalid="ignore", divide="ignore"):
                        pv = (point[key] - rp) / (op - rp) if op != rp else float("nan")
                        share[key] = Estimate(pv, *percentile_interval((draws[key] - rd) / (od - rd), level))
        results.append(
            StrategyResult(name, int(imp.viewer.size), imp.shortfall, imp.incompatible, metrics, lift, share)
        )
    return results


# --------------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------------
@dataclass
class WorldResult:
    """All strategies in one world, and how that world was calibrated."""

    world: str
    strategies: list[StrategyResult]
    intercepts: dict[str, float]
    data_like_rate: dict[str, float]  # the speed-dating like rate per rater gender (the target)
    random_pair_like: dict[str, float]  # mean P over compatible pairs per rater gender, after calibration
    random_pair_mutual: float  # mean P(i→j) P(j→i) over compatible pairs
    random_strategy_like: dict[str, float]  # what the random strategy's viewers of each gender liked
    # The world's P(like | partner rating) on this population, per rater gender: [(rating, mean P, pairs)].
    curve: dict[str, list[tuple[int, float, int]]] = field(default_factory=dict)

    def by_name(self) -> dict[str, StrategyResult]:
        return {s.strategy: s for s in self.strategies}


@dataclass
class SimulationResult:
    """What ``simulate`` measured; ``table()`` renders it for a terminal or a markdown file."""

    config: dict[str, Any]
    worlds: list[WorldResult]
    data_mutual_rate: float
    timings: dict[str, float] = field(default_factory=dict)
    ingest: dict[str, Any] = field(default_factory=dict)
    report_path: Path | None = None

    def table(self, world: str | None = None) -> str:
        """Markdown table(s): each strategy's metrics (95 % CI), lift over random, share of oracle's lift."""
        parts = []
        for w in self.worlds:
            if world is not None and w.world != world:
                continue
            parts.append(f"World: {w.world}\n\n" + strategy_table(w))
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["report_path"] = str(self.report_path) if self.report_path else None
        return d


def strategy_table(w: WorldResult) -> str:
    head = (
        "| strategy | like rate | mutual rate | matches / user | prec@k viewer | prec@k candidate | coverage "
        "| Gini | like lift | mutual lift | share of oracle lift (mutual) | share of oracle lift (like) |"
    )
    lines = [head, "|" + "---|" * 12]
    for s in w.strategies:
        m = s.metrics

        def cell(e: Estimate | None, d: int = 3) -> str:
            return "–" if e is None or not math.isfinite(e.value) else e.fmt(d)

        lines.append(
            f"| {STRATEGY_LABELS.get(s.strategy, s.strategy)} | {cell(m['like_rate'])} "
            f"| {cell(m['mutual_rate'])} | {cell(m['matches_per_user'], 2)} "
            f"| {cell(m['precision_viewer'])} | {cell(m['precision_candidate'])} | {cell(m['coverage'])} "
            f"| {cell(m['gini'])} | {cell(s.lift.get('like_rate'), 2)} | {cell(s.lift.get('mutual_rate'), 2)} "
            f"| {cell(s.oracle_share.get('mutual_rate'), 2)} | {cell(s.oracle_share.get('like_rate'), 2)} |"
        )
    return "\n".join(lines)


class TruthEncoder:
    """Not a model: embeds each photo as its owner's hidden traits, to measure the pipeline with perfect vectors.

    ``[looks, cos(π q / 2), sin(π q / 2)]`` (q: attractiveness percentile within gender), L2-normalised and
    zero-padded to ``dim``: the cosine of two users is a mix of their looks similarity and the closeness of
    their attractiveness — exactly what the similarity world rewards. With these vectors the engine's result
    is an upper bound for any photo encoder under the product's hypothesis; what is lost is lost downstream
    (filters, ANN, rerank). A photo is recognised by its decoded pixels (decoded as ingestion decodes them).
    """

    encoder_id = "truth-vectors-v1"
    source = "truth"

    def __init__(self, pop_dir: Path, settings: Settings, dim: int = 32) -> None:
        import hashlib

        from ingestion.reader import RawPhoto, decode_photo, read_photo

        pop = Population.from_dir(pop_dir, settings)
        if dim < pop.looks.shape[1] + 2:
            raise InvalidInput(f"truth encoder: dim must be at least {pop.looks.shape[1] + 2}")
        self.dim = dim
        q = pop.percentile()
        vec = np.zeros((pop.n, dim), dtype=np.float32)
        d = pop.looks.shape[1]
        vec[:, :d] = pop.looks
        vec[:, d] = np.cos(np.pi * q / 2)
        vec[:, d + 1] = np.sin(np.pi * q / 2)
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
        index = {u: i for i, u in enumerate(pop.user_ids)}
        self._hash = hashlib.sha256
        self._by_pixels: dict[str, np.ndarray] = {}
        root = pop_dir.resolve()
        with (pop_dir / "metadata.csv").open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                raw = read_photo(root, row["image_path"], settings.images)
                if not isinstance(raw, RawPhoto):
                    continue
                dec = decode_photo(raw, settings.images)
                if hasattr(dec, "image") and row["user_id"] in index:
                    self._by_pixels[self._key(dec.image)] = vec[index[row["user_id"]]]

    def _key(self, image: Any) -> str:
        return self._hash(f"{image.size}".encode() + image.tobytes()).hexdigest()

    def embed(self, images: Sequence[Any], batch_size: int = 8) -> np.ndarray:
        """(n, dim) float32 unit vectors; raises ``InvalidInput`` for a photo not in the population."""
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for i, im in enumerate(images):
            v = self._by_pixels.get(self._key(im))
            if v is None:
                raise InvalidInput("truth encoder: a photo that is not in the population's metadata.csv")
            out[i] = v
        return out


def _load_sim_encoder(encoder: Any, out: Path, tiny_pixel_budget: int, dim: int) -> Any:
    """An ``Encoder``: the one given, one loaded from a source, or (None) a tiny one built in ``out``."""
    if encoder is not None and not isinstance(encoder, str | Path):
        return encoder
    from training.encoder import load_encoder

    if encoder is None:
        from training.tiny import build_tiny_checkpoint

        tiny = out / "tiny-encoder"
        if not (tiny / "config.json").is_file():
            build_tiny_checkpoint(tiny, seed=0)
        return load_encoder(tiny, device="cpu", dtype="float32", pixel_budget=tiny_pixel_budget, dim=dim)
    return load_encoder(encoder)


def _stored_users(store: Any) -> set[str]:
    """Users whose point in ``users`` has a usable mean vector (``recommend`` raises for the others)."""
    from engine.schema import USERS

    out = set()
    for pt in store.scroll(USERS, with_vectors=True):
        v = None if pt.vector is None else np.asarray(pt.vector, dtype=np.float32)
        if v is not None and v.size and np.any(v) and np.all(np.isfinite(v)):
            out.add(str(pt.payload["user_id"]))
    return out


def simulate(
    out: Path,
    *,
    settings: Settings,
    users: int = 200,
    rounds: int = 5,
    k: int = 10,
    seed: int = 0,
    population: Path | None = None,
    encoder: Any = None,
    exposure_cap: int | None = None,
    worlds: Sequence[str] = WORLDS,
    strategies: Sequence[str] = STRATEGIES,
    world_settings: WorldSettings | None = None,
    n_boot: int = 1000,
    engine_likes: bool = False,
    tiny_pixel_budget: int = 128 * 128,
    write_report: bool = True,
) -> SimulationResult:
    """Run the like-rate simulation through the real pipeline; write ``out/report.md``, ``out/results.json``.

    ``encoder="truth"``: ``TruthEncoder`` (perfect vectors from the hidden traits: the pipeline's ceiling).
    ``population``: a demo-data folder to reuse (default: ``make_demo_data(out/population, users, seed)``,
    reused if it exists). ``encoder``: an ``Encoder``, or a source for ``load_encoder``; None builds a tiny
    random Qwen3-VL in ``out/tiny-encoder``. The photos are ingested with ``run_ingest`` into a fresh store in
    ``out/store`` (a server backend gets the collection prefix ``sim_``), and the engine strategies call
    ``recommend()`` against it. ``exposure_cap``: most times one user may be shown per round by
    ``engine_capped`` (default ``k``: the mean exposure per round). ``engine_likes``: pass each viewer's likes
    so far to ``recommend(likes=...)`` (off: the engine ranks from photos alone, and its picks are computed
    once for all worlds). Deterministic per ``seed``.

    Raises ``InvalidInput`` for bad arguments or an unusable population folder; store and encoder errors pass.
    """
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise InvalidInput(f"strategies: {unknown} not among {', '.join(STRATEGIES)}")
    for w in worlds:
        if w not in WORLDS:
            raise InvalidInput(f"world: {w!r} is not one of {', '.join(WORLDS)}")
    if rounds < 1 or k < 1:
        raise InvalidInput(f"rounds and k must be at least 1 (got {rounds}, {k})")
    cap = exposure_cap if exposure_cap is not None else k
    timings: dict[str, float] = {}

    # 1. Population on disk.
    t = time.perf_counter()
    pop_dir = Path(population) if population is not None else out / "population"
    if population is None and not (pop_dir / "truth.json").is_file():
        from evaluation.demo_data import make_demo_data

        make_demo_data(pop_dir, users=users, seed=seed, progress=settings.progress)
    timings["population_s"] = time.perf_counter() - t

    # 2. Photos -> encoder -> store.
    t = time.perf_counter()
    if isinstance(encoder, str) and encoder == "truth":
        enc: Any = TruthEncoder(pop_dir, settings)
    else:
        enc = _load_sim_encoder(encoder, out, tiny_pixel_budget, settings.encoder.dim)
    update: dict[str, Any] = {"store_path": out / "store"}
    if settings.resolved_backend == "server":
        update["collection_prefix"] = f"sim_{settings.collection_prefix}"
    sim_settings = settings.model_copy(update=update)
    from engine.errors import EncoderMismatch
    from engine.store import open_store
    from ingestion.job import run_ingest

    store = open_store(sim_settings)
    try:

        def run(rebuild: bool) -> Any:
            return run_ingest(
                pop_dir,
                pop_dir / "metadata.csv",
                settings=sim_settings,
                encoder=enc,
                store=store,
                rebuild=rebuild,
                report_path=out / "ingest_report.json",
            )

        # A re-run over the same OUT reuses the stored vectors (the job skips photos it already holds);
        # another encoder's store, or users from another population, start it afresh.
        try:
            report = run(rebuild=False)
            stored = _stored_users(store)
            if stored - set(Population.user_ids_in(pop_dir)):
                raise EncoderMismatch("the store holds users from another population")
        except EncoderMismatch as exc:
            log.info("simulation store rebuilt: %s", exc)
            report = run(rebuild=True)
            stored = _stored_users(store)
        timings["ingest_s"] = time.perf_counter() - t
        pop = Population.from_dir(pop_dir, sim_settings, only=stored)
        if pop.n < 2:
            raise InvalidInput(f"{pop_dir}: fewer than two users made it into the store")
        compat = pop.compatible()
        calib = fit_calibration()
        cal = calib.calibration

        # Strategies whose picks ignore the decisions are built once and replayed in every world.
        shared: dict[str, Strategy] = {}
        if "similarity" in strategies:
            shared["similarity"] = Memo(StoreSimilarity(store, pop, depth=rounds * k))
        if "engine" in strategies:
            eng = EngineStrategy("engine", store, sim_settings, pop, use_likes=engine_likes)
            shared["engine"] = eng if engine_likes else Memo(eng)
        if "engine_capped" in strategies:
            base = EngineStrategy("engine", store, sim_settings, pop, use_likes=engine_likes)
            capped = ExposureCapped("engine_capped", base, cap, pop.n)
            shared["engine_capped"] = capped if engine_likes else Memo(capped)

        world_results = []
        for wname in worlds:
            t = time.perf_counter()
            world = build_world(wname, pop, compat, cal, world_settings)
            strats: list[Strategy] = []
            for name in strategies:
                if name == "random":
                    strats.append(random_strategy(compat, seed))
                elif name == "popularity":
                    strats.append(popularity_strategy(compat, pop))
                elif name == "oracle":
                    strats.append(oracle_strategy(compat, world))
                else:
                    strats.append(shared[name])
            imps = run_rounds(
                strats, world, rounds=rounds, k=k, seed=seed, compat=compat, progress=settings.progress
            )
            results = evaluate(imps, pop.n, n_boot=n_boot, seed=seed)
            rnd: dict[str, float] = {}
            if "random" in imps:
                imp = imps["random"]
                for g in sorted(set(pop.gender.tolist())):
                    sel = pop.gender[imp.viewer] == g
                    rnd[g] = float(imp.like[sel].mean()) if sel.any() else float("nan")
            world_results.append(
                WorldResult(
                    wname,
                    results,
                    world.intercepts,
                    world.targets,
                    world.random_pair_like,
                    world.random_pair_mutual,
                    rnd,
                    world_curve(world, pop, compat, cal),
                )
            )
            timings[f"world_{wname}_s"] = time.perf_counter() - t
    finally:
        store.close()

    timings["total_s"] = time.perf_counter() - t0
    config = {
        "users": pop.n,
        "users_requested": users,
        "rounds": rounds,
        "k": k,
        "seed": seed,
        "exposure_cap": cap,
        "worlds": list(worlds),
        "strategies": list(strategies),
        "world_settings": asdict(world_settings or WorldSettings()),
        "n_boot": n_boot,
        "engine_likes": engine_likes,
        "population": str(pop_dir),
        "encoder_id": getattr(enc, "encoder_id", "?"),
        "encoder_source": str(getattr(enc, "source", encoder)),
        "store_backend": store.backend,
        "compatible_pairs_per_user": float(compat.sum(axis=1).mean()),
    }
    ingest = {"counts": report.counts.model_dump(), "stage_seconds": report.stage_seconds.model_dump()}
    result = SimulationResult(config, world_results, cal.mutual_rate, timings, ingest)
    if write_report:
        result.report_path = write_simulation_report(result, calib, out)
    return result


# --------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
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
    plt.close(fig)
    return path


def plot_strategies(w: WorldResult, path: Path) -> Path:
    """One bar chart per metric, one bar per strategy, 95 % CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5))
    axes.ravel()[-1].axis("off")
    names = [s.strategy for s in w.strategies]
    colours = plt.get_cmap("tab10")(np.arange(len(names)))
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
    plt.close(fig)
    return path


def plot_oracle_share(result: SimulationResult, path: Path) -> Path:
    """Share of the oracle's mutual-match lift over random, per strategy, side by side for every world."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
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
    plt.close(fig)
    return path


def write_simulation_report(result: SimulationResult, calib: CalibrationData, out: Path) -> Path:
    """Write ``out/report.md`` (tables, calibration, method), its figures in ``out/figures/`` and
    ``out/results.json``. Returns the report's path."""
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    plot_calibration(calib, figs / "calibration.png", result.worlds)
    for w in result.worlds:
        plot_strategies(w, figs / f"strategies_{w.world}.png")
    if result.worlds and any(s.oracle_share for s in result.worlds[0].strategies):
        plot_oracle_share(result, figs / "oracle_share.png")
    (out / "results.json").write_text(json.dumps(result.to_dict(), indent=1, default=_json_default) + "\n")

    c = result.config
    cal = calib.calibration
    lines = [
        "# Like-rate simulation",
        "",
        f"{c['users']} users (population `{c['population']}`), {c['rounds']} rounds of k = {c['k']} "
        "per strategy, "
        f"seed {c['seed']}, exposure cap {c['exposure_cap']} per round, {c['n_boot']} bootstrap draws. "
        f"Encoder `{c['encoder_id']}` ({c['encoder_source']}), store backend `{c['store_backend']}`; "
        f"on average {c['compatible_pairs_per_user']:.1f} compatible candidates per user.",
        "",
        "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()),
        "",
        "## Calibration (Columbia speed-dating data)",
        "",
        "![calibration](figures/calibration.png)",
        "",
        "| rater | dates | data like rate | fit intercept | fit slope / rating point |",
        "|---|---|---|---|---|",
    ]
    for g, f in cal.fits.items():
        lines.append(f"| {g} | {f.n_dates} | {f.like_rate:.3f} | {f.intercept:.3f} | {f.slope:.3f} |")
    lines += [
        "",
        f"Data mutual-match rate: {cal.mutual_rate:.3f}.",
        "",
        "Random pairs in each world after calibration (mean P over all compatible pairs = the data's rate by "
        "construction; realised = what the random strategy's viewers actually liked):",
        "",
        "| world | gender | data | mean P, compatible pairs | realised by random strategy | "
        "mean P(i→j)·P(j→i) (data mutual: " + f"{cal.mutual_rate:.3f}) |",
        "|---|---|---|---|---|---|",
    ]
    for w in result.worlds:
        for g in sorted(w.random_pair_like):
            lines.append(
                f"| {w.world} | {g} | {w.data_like_rate[g]:.3f} | {w.random_pair_like[g]:.3f} "
                f"| {w.random_strategy_like.get(g, float('nan')):.3f} | {w.random_pair_mutual:.3f} |"
            )
    for w in result.worlds:
        lines += [
            "",
            f"## World: {w.world}",
            "",
            strategy_table(w),
            "",
            f"![{w.world}](figures/strategies_{w.world}.png)",
        ]
        short = [s for s in w.strategies if s.shortfall]
        if short:
            lines += [
                "",
                "Recommendations missing (a viewer's compatible pool ran out, or the cap): "
                + ", ".join(f"{s.strategy} {s.shortfall}" for s in short)
                + ".",
            ]
    if (figs / "oracle_share.png").is_file():
        lines += ["", "## How much of the signal survives", "", "![oracle share](figures/oracle_share.png)"]
    lines += ["", "## Method", "", _METHOD_NOTES]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


_METHOD_NOTES = """\
- Decisions come from the hidden traits in `truth.json` only, never from the vectors. Two worlds:
  **similarity** (the product's hypothesis: people like looks and attractiveness close to their own) and
  **aspiration**
  (Bruch & Newman 2018: everyone prefers more attractive partners as in the speed-dating curve, aims ~25 %
  above their own percentile, and says yes less the further the partner falls below that aim). Each rater
  gender's intercept is solved so that random compatible pairs like each other at the speed-dating rate.
- Latent attractiveness is put on the data's 1–10 scale by quantile matching: a partner at percentile q of
  their gender gets the rating at quantile q of the ratings raters of the viewer's gender gave.
- Every user is a viewer; each round each strategy shows each viewer up to k compatible users it has not shown
  them before. A pair's outcome is fixed by a seeded counter-based uniform, so strategies that show the same
  pair see the same outcome. Mutual = the viewer likes the candidate and the candidate would like the viewer.
- Matches per user: mutual matches per viewer over all rounds (a capped strategy that leaves viewers short
  can raise the rates per impression while making fewer matches).
- Precision@k per side: per viewer, the share of their recommendations they like (viewer side) and the share
  who would like them back (candidate side), averaged over viewers. Coverage: share of users shown to anyone.
  Gini: of how often each user was shown (0 = equal exposure).
- 95 % intervals: percentile bootstrap. Rates and precisions resample viewers (a viewer's impressions are
  correlated, so impressions are not the unit); coverage and Gini resample the users whose exposure they
  describe. One set of draws is shared by all strategies, so lifts and shares of the oracle's lift are
  paired. Share of the oracle's lift = (strategy − random) / (oracle − random).
- `popularity` ranks by the hidden attractiveness (an upper bound for a popularity ranking). `engine` calls
  `recommend(user, k, exclude=already shown)`; with `engine_likes` on it also passes the viewer's likes so
  far (`likes=`), otherwise it ranks from the photos alone (what this report measures: how much of the
  traits survives photos → encoder → Qdrant → rerank). Like histories are never written to the store, so
  every strategy and world runs on the same store. `similarity` is one filtered nearest-neighbour query per
  viewer on the users' mean vectors, served k at a time. The oracle ranks by P(i→j)·P(j→i) greedily per
  viewer; it is the ceiling for a per-viewer ranking, not a global optimum under exposure limits.
- With an untrained (tiny, random) encoder the vectors carry little of the traits; a lift near zero for
  `similarity`/`engine` is then the honest result, not a bug."""
