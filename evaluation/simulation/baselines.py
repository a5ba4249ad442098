"""Peer strategies that learn from the logged decisions, to measure the engine against.

``qdrant_average`` / ``qdrant_best``
    Qdrant's own Recommendation API (``Store.recommend``: strategies ``average_vector`` and ``best_score``)
    with the viewer's logged likes as positives and passes as negatives, under the engine's compatibility
    filter. Before a first like the viewer's own point is the one positive (the API needs one).
``recon``
    RECON (Pizzato et al., RecSys 2010), a reciprocal content recommender, in embedding space: A's
    preference is the mean vector of the people A liked (A's own vector before any like), the
    compatibility of B for A is ``(1 + pref_A · v_B) / 2`` (RECON's mean attribute match, continuous), and
    the reciprocal score is the harmonic mean of the two directions. Candidates: a filtered store query for
    A's preference (``depth`` of them), reranked.

Each reads only what production would: the store's vectors and profiles and its ``feedback`` collection
(filled by ``FeedbackLog`` after every round), never the population's hidden traits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.compatibility import Profile, compatible_filter
from engine.errors import InvalidInput
from engine.feedback import LIKE, PASS
from engine.ranking.rerank import aggregate, l2_normalize
from engine.schema import USERS, user_point_id
from engine.store import Query, RecommendQuery, Store
from evaluation.simulation.feedback import FeedbackLog


class _FromStore:
    """Vectors and profiles of the roster's users, read once from the store; the round's decisions."""

    name = "?"

    def __init__(self, store: Store, user_ids: Sequence[str]) -> None:
        self.store = store
        self.user_ids = list(user_ids)
        self._index = {u: i for i, u in enumerate(self.user_ids)}
        points = store.retrieve(USERS, [user_point_id(u) for u in self.user_ids], with_vectors=True)
        self._vec: dict[str, np.ndarray] = {}
        self._profile: dict[str, Profile] = {}
        for pt in points:
            uid = str(pt.payload["user_id"])
            self._vec[uid] = l2_normalize(np.asarray(pt.vector, dtype=np.float32))
            self._profile[uid] = Profile.from_payload(pt.payload, where=f"users point of {uid}")
        missing = [u for u in self.user_ids if u not in self._vec]
        if missing:
            raise InvalidInput(f"{type(self).__name__}: {len(missing)} users have no vector (e.g. {missing[0]})")
        self.log = FeedbackLog(store, self.user_ids)
        self._decisions: dict[str, dict[str, str]] = {}

    def start_round(self, round_index: int) -> None:
        if round_index == 0:
            self.log.reset()
        self._decisions = self.log.decisions()

    def observe(self, round_index: int, viewer: np.ndarray, candidate: np.ndarray, like: np.ndarray) -> None:
        self.log.record(round_index, viewer, candidate, like)

    def _filter(self, uid: str, exclude: set[int]):  # noqa: ANN202 - engine.filters.Filter
        return compatible_filter(self._profile[uid], exclude=[self.user_ids[j] for j in exclude])

    def _indices(self, hits: Sequence[object]) -> list[int]:
        out = []
        for h in hits:
            payload = getattr(h, "payload", None) or {}
            j = self._index.get(str(payload.get("user_id")))
            if j is not None:
                out.append(j)
        return out


class QdrantRecommend(_FromStore):
    """Qdrant's Recommendation API: likes as positives, passes as negatives, the mutual filter."""

    def __init__(self, name: str, store: Store, user_ids: Sequence[str], strategy: str) -> None:
        super().__init__(store, user_ids)
        self.name = name
        self._strategy = strategy

    def pick(self, viewer: int, k: int, exclude: set[int], liked: Sequence[int]) -> list[int]:
        uid = self.user_ids[viewer]
        mine = self._decisions.get(uid, {})
        pos = tuple(user_point_id(c) for c, d in mine.items() if d == LIKE) or (user_point_id(uid),)
        neg = tuple(user_point_id(c) for c, d in mine.items() if d == PASS)
        hits = self.store.recommend(
            USERS,
            RecommendQuery(
                positive=pos,
                negative=neg,
                limit=k,
                strategy=self._strategy,
                filter=self._filter(uid, exclude),
                with_payload=("user_id",),
            ),
        )
        return self._indices(hits)[:k]


class Recon(_FromStore):
    """RECON-style reciprocal content score (see the module docstring)."""

    def __init__(self, name: str, store: Store, user_ids: Sequence[str], depth: int = 200) -> None:
        super().__init__(store, user_ids)
        self.name = name
        self._depth = depth
        self._pref: dict[str, np.ndarray] = {}

    def start_round(self, round_index: int) -> None:
        super().start_round(round_index)
        self._pref = {}
        for uid, mine in self._decisions.items():
            liked = [self._vec[c] for c, d in mine.items() if d == LIKE and c in self._vec]
            if liked:
                self._pref[uid] = np.mean(liked, axis=0).astype(np.float32)

    def _pref_of(self, uid: str) -> np.ndarray:
        return self._pref.get(uid, self._vec[uid])

    def pick(self, viewer: int, k: int, exclude: set[int], liked: Sequence[int]) -> list[int]:
        uid = self.user_ids[viewer]
        pref = self._pref_of(uid)
        q = pref if np.any(pref) else self._vec[uid]
        hits = self.store.query(
            USERS,
            Query(vector=l2_normalize(q), limit=max(k, self._depth), filter=self._filter(uid, exclude),
                  with_payload=("user_id",)),
        )  # fmt: skip
        cand = self._indices(hits)
        if not cand:
            return []
        ids = [self.user_ids[j] for j in cand]
        vb = np.stack([self._vec[c] for c in ids])
        fwd = (1.0 + vb @ pref) / 2.0
        rev = (1.0 + np.array([self._pref_of(c) @ self._vec[uid] for c in ids])) / 2.0
        score = aggregate(np.clip(fwd, 0, 1), np.clip(rev, 0, 1), "harmonic")
        order = np.argsort(-score, kind="stable")[:k]
        return [cand[i] for i in order]
