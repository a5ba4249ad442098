"""Recommendation strategies the simulation compares: each picks up to ``k`` candidates per viewer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from engine.compatibility import Profile
from engine.errors import InvalidInput
from engine.settings import Settings
from engine.store import Store
from evaluation.simulation.feedback import FeedbackLog
from evaluation.simulation.population import Population
from evaluation.simulation.worlds import World

STRATEGIES: tuple[str, ...] = (
    "random",
    "popularity",
    "similarity",
    "engine",
    "engine_capped",
    "qdrant_average",
    "qdrant_best",
    "recon",
    "oracle",
    "oracle_capped",
    "market",
    "sinkhorn",
)
# Strategies that learn from the decisions fed back after every round (each on a store of its own).
LEARNING: frozenset[str] = frozenset({"engine", "engine_capped", "qdrant_average", "qdrant_best", "recon"})
STRATEGY_LABELS: dict[str, str] = {
    "random": "random (before)",
    "popularity": "most attractive first",
    "similarity": "one-sided similarity (ANN)",
    "engine": "engine (reciprocal rerank)",
    "engine_capped": "engine + impression budget",
    "qdrant_average": "Qdrant recommend, average_vector",
    "qdrant_best": "Qdrant recommend, best_score",
    "recon": "RECON-style reciprocal content",
    "oracle": "oracle (true P, ceiling)",
    "oracle_capped": "oracle + exposure cap (true P)",
    "market": "market reference (true P, attention-aware)",
    "sinkhorn": "market reference (Sinkhorn, top-N, true P)",
}


class Strategy(Protocol):
    """Picks up to ``k`` candidates (population indices, best first) for ``viewer``."""

    name: str

    def start_round(self, round_index: int) -> None: ...

    def pick(self, viewer: int, k: int, exclude: set[int], liked: Sequence[int]) -> list[int]: ...


def open_candidates(compat_row: np.ndarray, exclude: set[int]) -> np.ndarray:
    """Indices of the compatible users (``compat_row``: bool, (N,)) not in ``exclude``, ascending."""
    ok = compat_row.copy()
    if exclude:
        ok[list(exclude)] = False
    return np.flatnonzero(ok)


def best_k(cand: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` candidates with the highest scores (``scores[i]`` belongs to ``cand[i]``), best first; ties keep
    ``cand``'s order."""
    take = min(k, cand.size)
    top = np.argpartition(-scores, take - 1)[:take]
    return cand[top[np.argsort(-scores[top], kind="stable")]]


class ScoreStrategy:
    """Top-``k`` compatible, not yet shown candidates by a score row ``score(viewer) -> (n,)``."""

    def __init__(self, name: str, compat: np.ndarray, score: Callable[[int, int], np.ndarray]) -> None:
        self.name = name
        self._compat = compat
        self._score = score
        self._round = 0

    def start_round(self, round_index: int) -> None:
        self._round = round_index

    def pick(self, viewer: int, k: int, exclude: set[int], liked: Sequence[int]) -> list[int]:
        cand = open_candidates(self._compat[viewer], exclude)
        if cand.size == 0:
            return []
        return best_k(cand, self._score(viewer, self._round)[cand], k).tolist()


def random_strategy(compat: np.ndarray, seed: int) -> ScoreStrategy:
    """Uniformly random within the filter; seeded per (seed, round, viewer)."""
    n = int(compat.shape[0])

    def score(v: int, r: int) -> np.ndarray:
        return np.random.default_rng([seed, 0x5EED, r, v]).random(size=n)

    return ScoreStrategy("random", compat, score)


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

    def observe(self, round_index: int, viewer: np.ndarray, candidate: np.ndarray, like: np.ndarray) -> None:
        observe = getattr(self._base, "observe", None)
        if observe is not None:
            observe(round_index, viewer, candidate, like)

    def pick(self, viewer: int, k: int, exclude: set[int], liked: Sequence[int]) -> list[int]:
        out = [j for j in self._base.pick(viewer, self._fetch * k, exclude, liked) if self._count[j] < self._cap]
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

    def __init__(self, store: Store, user_ids: Sequence[str], depth: int = 0) -> None:
        self._depth = depth
        self._ranked: dict[int, list[int]] = {}
        from engine.compatibility import compatible_filter
        from engine.schema import USERS, user_point_id

        self._store = store
        self._user_ids = list(user_ids)
        self._index = {u: i for i, u in enumerate(self._user_ids)}
        self._filter = compatible_filter
        self._users = USERS
        points = store.retrieve(USERS, [user_point_id(u) for u in self._user_ids], with_vectors=True)
        self._vec: dict[str, np.ndarray] = {}
        self._profile: dict[str, Profile] = {}
        for pt in points:
            uid = str(pt.payload["user_id"])
            self._vec[uid] = np.asarray(pt.vector, dtype=np.float32)
            self._profile[uid] = Profile.from_payload(pt.payload, where=f"users point of {uid}")
        missing = [u for u in self._user_ids if u not in self._vec]
        if missing:
            raise InvalidInput(f"similarity: {len(missing)} users have no vector in the store (e.g. {missing[0]})")

    def start_round(self, round_index: int) -> None:
        pass

    def pick(self, viewer: int, k: int, exclude: set[int], liked: Sequence[int]) -> list[int]:
        from engine.store import Query

        ranked = self._ranked.get(viewer)
        if ranked is None or sum(j not in exclude for j in ranked) < k:
            uid = self._user_ids[viewer]
            flt = self._filter(self._profile[uid], exclude=[self._user_ids[j] for j in exclude])
            query = Query(vector=self._vec[uid], limit=max(k, self._depth), filter=flt, with_payload=("user_id",))
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
    far (``likes=``), which blends them into the viewer's taste. With a ``feedback`` log every round's likes
    and passes are recorded into the store (and the log's ``after`` hook, e.g. a model rebuild, runs) before
    the next round; without either it ranks from the photos alone and its picks do not depend on the world."""

    def __init__(
        self,
        name: str,
        store: Store,
        settings: Settings,
        user_ids: Sequence[str],
        *,
        use_likes: bool = False,
        feedback: FeedbackLog | None = None,
    ) -> None:
        from engine.ranking.exposure import ExposureLedger
        from engine.recommend import recommend

        self.name = name
        self.uses_likes = use_likes or feedback is not None
        self._use_likes = use_likes
        self._recommend = recommend
        self._store = store
        self._settings = settings
        self._ids = list(user_ids)
        self._index = {u: i for i, u in enumerate(self._ids)}
        self._feedback = feedback
        # Impressions served per period (a round is a period), as the serving process would count them.
        self.ledger = ExposureLedger()

    def start_round(self, round_index: int) -> None:
        if round_index == 0:
            self.ledger.reset()
            if self._feedback is not None:
                self._feedback.reset()
        else:
            self.ledger.new_period()

    def observe(self, round_index: int, viewer: np.ndarray, candidate: np.ndarray, like: np.ndarray) -> None:
        if self._feedback is not None:
            self._feedback.record(round_index, viewer, candidate, like)

    def pick(self, viewer: int, k: int, exclude: set[int], liked: Sequence[int]) -> list[int]:
        ids = self._ids
        matches = self._recommend(
            ids[viewer],
            k=k,
            exclude=[ids[j] for j in exclude],
            likes=[ids[j] for j in liked] if self._use_likes else None,
            store=self._store,
            settings=self._settings,
            exposure=self.ledger,
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
