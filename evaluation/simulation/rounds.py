"""Running the rounds: every strategy shows every viewer ``k`` candidates per round; decisions follow."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import InvalidInput
from evaluation.simulation.strategies import Strategy
from evaluation.simulation.worlds import World, pair_uniform

log = logging.getLogger(__name__)


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
    # (m,) bool: the viewer likes the candidate and the candidate looked at that like (within attention);
    # None = unlimited attention (every like is looked at).
    seen: np.ndarray | None = None

    @property
    def mutual(self) -> np.ndarray:
        return self.like & self.back

    @property
    def effective(self) -> np.ndarray:
        """(m,) bool: a match that happens under limited attention — liked, looked at, and liked back."""
        seen = self.like if self.seen is None else self.seen
        return seen & self.back


def attention_seen(
    candidate: np.ndarray, round_: np.ndarray, like: np.ndarray, attention: int | None
) -> np.ndarray | None:
    """(m,) bool: which likes their receiver looks at, when each receiver looks at no more than ``attention``
    incoming likes per round, in the order they arrived (position-based: the first ``attention``).

    ``candidate``, ``round_``, ``like``: (m,) impressions in the order they were made. None when
    ``attention`` is None (unlimited). Raises ``InvalidInput`` if ``attention`` is below 1.
    """
    if attention is None:
        return None
    if attention < 1:
        raise InvalidInput(f"attention: must be at least 1 like per receiver per round, got {attention}")
    seen = np.zeros(like.shape, dtype=bool)
    idx = np.flatnonzero(like)
    if idx.size == 0:
        return seen
    # Stable sort by (round, receiver) keeps arrival order inside each group; position = rank in the group.
    order = np.lexsort((idx, candidate[idx], round_[idx]))
    sidx = idx[order]
    key = round_[sidx].astype(np.int64) * (int(candidate.max()) + 1) + candidate[sidx]
    start = np.r_[0, np.flatnonzero(np.diff(key)) + 1]
    pos = np.arange(sidx.size) - np.repeat(start, np.diff(np.r_[start, sidx.size]))
    seen[sidx[pos < attention]] = True
    return seen


def _absent(joins: np.ndarray | None, round_index: int) -> set[int]:
    """Users who have not arrived by ``round_index`` (``joins``: each user's arrival round)."""
    if joins is None:
        return set()
    return set(np.flatnonzero(np.asarray(joins) > round_index).tolist())


def newcomer_joins(n: int, share: float, join_round: int, rounds: int, seed: int) -> np.ndarray | None:
    """(n,) arrival round (0-based) per user: a seeded ``share`` of them arrive in round ``join_round``
    (1-based, as a person counts rounds), the rest from the start. None when no one arrives late (share 0,
    or fewer rounds than ``join_round``). Raises ``InvalidInput`` for a share outside [0, 1) or a round < 1.
    """
    if not 0.0 <= share < 1.0:
        raise InvalidInput(f"newcomer share: must be in [0, 1), got {share}")
    if join_round < 1:
        raise InvalidInput(f"newcomer round: rounds count from 1, got {join_round}")
    count = int(round(share * n))
    if count == 0 or join_round == 1 or join_round > rounds:
        return None
    joins = np.zeros(n, dtype=np.int64)
    joins[np.random.default_rng([seed, 0x4E3C]).choice(n, size=count, replace=False)] = join_round - 1
    return joins


def run_rounds(
    strategies: Sequence[Strategy],
    world: World,
    *,
    rounds: int,
    k: int,
    seed: int,
    compat: np.ndarray | None = None,
    attention: int | None = None,
    progress: bool = False,
    joins: np.ndarray | None = None,
) -> dict[str, Impressions]:
    """Each round every user gets up to ``k`` not-yet-shown candidates from each strategy; decisions follow.

    ``compat`` (n, n) bool, when given, counts impressions outside the filter (``Impressions.incompatible``).
    ``attention``: each receiver looks at no more than this many incoming likes per round, the first to
    arrive (``Impressions.seen``); None looks at all.

    A strategy with an ``observe(round, viewer, candidate, like)`` method is handed each round's
    impressions and decisions (likes and passes) when the round ends, before the next one is picked.

    ``joins`` (n,) int: the round (0-based) each user arrives in; before it they are neither served nor
    shown to anyone (None: everyone from round 0). Newcomers enter with no history.

    Viewers are served in a random order per round (seeded, the same for every strategy), which matters
    only for the exposure cap. Raises ``InvalidInput`` if ``rounds`` or ``k`` is below 1.
    """
    if rounds < 1 or k < 1:
        raise InvalidInput(f"rounds and k must be at least 1 (got {rounds}, {k})")
    if attention is not None and attention < 1:
        raise InvalidInput(f"attention: must be at least 1 like per receiver per round, got {attention}")
    n = world.p.shape[0]
    if joins is not None and np.asarray(joins).shape != (n,):
        raise InvalidInput(f"joins: one arrival round per user expected ({n}), got shape {np.shape(joins)}")
    out: dict[str, Impressions] = {}
    for strat in strategies:
        shown: list[set[int]] = [set() for _ in range(n)]
        liked: list[list[int]] = [[] for _ in range(n)]
        rec_v: list[int] = []
        rec_c: list[int] = []
        rec_r: list[int] = []
        shortfall = 0
        steps: Iterable[int] = range(rounds)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"{world.name}/{strat.name}", unit="round")
        observe = getattr(strat, "observe", None)
        for r in steps:
            strat.start_round(r)
            order = np.random.default_rng([seed, 0x0DE5, r]).permutation(n)
            first = len(rec_v)
            round_likes: list[np.ndarray] = []
            absent = _absent(joins, r)
            for v in order.tolist():
                if v in absent:
                    continue
                exclude = shown[v] | absent if absent else shown[v]
                picks = strat.pick(v, k, exclude, liked[v])
                if len(set(picks)) != len(picks) or exclude.intersection(picks) or v in picks:
                    raise InvalidInput(
                        f"strategy {strat.name}: repeated, self or not-yet-arrived recommendation for viewer {v}"
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
                round_likes.append(likes)
            if observe is not None:  # the round's likes and passes reach the strategy before the next round
                observe(
                    r,
                    np.asarray(rec_v[first:], dtype=np.int64),
                    np.asarray(rec_c[first:], dtype=np.int64),
                    np.concatenate(round_likes) if round_likes else np.zeros(0, dtype=bool),
                )
        vv, cc = np.asarray(rec_v, dtype=np.int64), np.asarray(rec_c, dtype=np.int64)
        like = pair_uniform(seed, vv, cc) < world.p[vv, cc]
        back = pair_uniform(seed, cc, vv) < world.p[cc, vv]
        bad = int((~compat[vv, cc]).sum()) if compat is not None and vv.size else 0
        if bad:
            log.warning("strategy %s: %d impressions outside the compatibility filter", strat.name, bad)
        rr = np.asarray(rec_r, dtype=np.int64)
        seen = attention_seen(cc, rr, like, attention)
        out[strat.name] = Impressions(vv, cc, rr, like, back, shortfall, bad, seen)
    return out
