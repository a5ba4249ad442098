"""Stage 2 of ``recommend()``: from stage 1's candidates to the ``k`` matches shown, with what explains each.

Photo-only path (``engine.ranking.rerank``): one lookup of the candidates' photos gives each candidate's best photo for
the asker; the reverse direction (the asker's own vector and photos against the candidates' mean vectors, or a
candidate's stored ``taste``) is scored in numpy from the vectors stage 1 brought back, the k-reciprocal rank
test from the K-th similarities, the two directions fused (``recommend.aggregation``).

Learned path (``engine.learned.model``): P(A likes B) and P(B likes A) from the served copy of the model, fused
(``recommend.learned_aggregation``, the expected mutual match by default), then the congestion penalty.

On both, a candidate's logged decision about the asker replaces s(B→A), and the ``k`` shown are chosen by
``engine.ranking.exposure`` (impression budget and cold-start slots, with the serving process's ledger).

The learned path reads stage 1's candidates as a ``Pool`` (ids and served-model rows, no ``ScoredPoint`` per
candidate on an embedded store). The module runs past 400 lines because both paths share ``Match``, the logged
replies and the best-photo lookup, which read best beside the two callers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engine.errors import InvalidInput
from engine.feedback import LIKE, PASS
from engine.filters import Filter, HasId, MatchAny
from engine.learned.model import congestion_factor, served_probabilities_arrays
from engine.learned.served import ServedModel
from engine.ranking.askers import Asker
from engine.ranking.audience import audience_of
from engine.ranking.exposure import ExposureLedger, ExposurePolicy, choose
from engine.ranking.rerank import (
    RerankInput,
    RerankResult,
    RerankWeights,
    aggregate,
    best_photo_per_owner,
    l2_normalize,
    rerank,
)
from engine.ranking.served_ids import LIKED, PASSED, RowUserIds, bare, decided, point_ids
from engine.ranking.user_copies import kept_vectors, listed_photos, unit_rows
from engine.reciprocity.blocks import kth_of_points
from engine.reciprocity.topk import NO_KTH
from engine.schema import (
    PHOTO_IDS,
    PHOTOS,
    TASTE,
    USER_ID,
    USERS,
    photo_ids_of,
)
from engine.settings import Settings
from engine.store.base import Hits, Query, ScoredPoint, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Match:
    """One recommended user, with what explains it.

    ``score``: the final reciprocal score in [0, 1]; ``score_a_to_b``: s(asker→candidate), how much the
    asker is expected to like them; ``score_b_to_a``: s(candidate→asker); ``best_photo_id``: the candidate's
    photo point id that best suits the asker's taste (None if none is stored); ``rank``: 1 = best.
    """

    user_id: str
    score: float
    score_a_to_b: float
    score_b_to_a: float
    best_photo_id: str | None
    rank: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def asker_kth(asker: Asker, stage1: np.ndarray, limit: int, reciprocity_k: int) -> float:
    """A's kth_sim for this very query: stage 1 is A's compatible list ranked by A's taste (minus
    ``exclude``), so its K-th score is exact when it is that long; shorter than asked means everyone
    compatible is in it. Otherwise (K above the stage-1 limit) the stored statistic is used."""
    if len(stage1) >= reciprocity_k:
        return float(np.sort(stage1)[::-1][reciprocity_k - 1])
    if len(stage1) < limit:
        return NO_KTH
    return asker.kth_sim


def candidate_vectors(cands: list[ScoredPoint], dim: int) -> np.ndarray:
    """Stage-1 candidates' mean vectors, (n, dim) float32 unit rows (zero rows where a backend sent none)."""
    return _stacked_units([c.vector for c in cands], dim)


def rerank_candidates(
    store: Store,
    asker: Asker,
    cands: list[ScoredPoint] | Hits | Pool,
    k: int,
    limit: int,
    settings: Settings,
    exposure: ExposureLedger | None = None,
) -> list[Match]:
    """Stage 2 for one asker: one lookup of the candidates' photos, the numpy rerank, the top ``k``
    (``engine.ranking.exposure`` with a ledger). ``cands``: stage 1's ``ScoredPoint``s, or on the learned path
    its ids only (``Hits``, or a ``Pool`` with their model rows: ``engine.recommend._stage1``). Raises
    ``InvalidInput`` for ids only without a learned model (the photo-only rerank reads payloads and vectors)."""
    n = len(cands)
    if n == 0:
        return []
    if asker.model is not None:
        return _learned_matches(store, asker, Pool.of(cands), k, settings, exposure)
    if isinstance(cands, Hits | Pool):
        raise InvalidInput("the photo-only rerank needs stage 1's payloads and vectors, not bare hits")
    rs = settings.recommend
    payloads = [c.payload or {} for c in cands]
    fwd_mean = np.array([c.score for c in cands], dtype=np.float64)

    # Candidates' photos: one exact query on photos, restricted to the candidates, scored against the taste.
    # Restricting by the indexed user_id keyword is cheaper than by a few hundred point ids (HasId):
    # measured on Edge at 10,000 users, ~40 % less time per lookup. Owners come from the users'
    # photo_ids, so a photo point not listed there (stale) is ignored.
    photo_owner = {str(ph): i for i, pl in enumerate(payloads) for ph in photo_ids_of(pl)}
    photo_ids_scored: list[str] = []
    photo_scores: list[float] = []
    if photo_owner:
        only_cands = Filter(must=(MatchAny.of(USER_ID, [str(pl.get(USER_ID)) for pl in payloads]),))
        res = store.query(
            PHOTOS,
            Query(
                vector=asker.taste,
                limit=2 * len(photo_owner),  # room for stale photo points, which are skipped below
                filter=only_cands,
                with_payload=False,
                exact=True,
            ),
        )
        photo_ids_scored = [r.id for r in res if r.id in photo_owner]
        photo_scores = [r.score for r in res if r.id in photo_owner]
    owners = np.array([photo_owner[p] for p in photo_ids_scored], dtype=np.int64)
    fwd_photo, best_idx = best_photo_per_owner(np.asarray(photo_scores, dtype=np.float64), owners, n)

    # The reverse direction in numpy from the candidates' vectors, which stage 1 brought along: cheaper
    # than one more store query per asker photo (each returns n scored points to convert into Python).
    cand_vecs = candidate_vectors(cands, asker.vector.shape[0])
    own = l2_normalize(asker.vector)
    mutual = cand_vecs @ own if not asker.taste_is_own else fwd_mean
    mutual = np.asarray(mutual, dtype=np.float64)
    rev_mean = mutual.copy()
    if len(asker.photo_vectors):
        rev_photo = np.max(l2_normalize(asker.photo_vectors) @ cand_vecs.T, axis=0).astype(np.float64)
    else:
        rev_photo = np.full(n, -np.inf)
    missing = ~np.any(cand_vecs, axis=1)  # a backend that sent no vector: fall back to the symmetric score
    if np.any(missing):
        rev_mean[missing] = fwd_mean[missing]
        rev_photo[missing] = -np.inf

    # Candidates with a like history: their own taste, not their mean vector, judges the asker.
    for i, pl in enumerate(payloads):
        if pl.get(TASTE):
            t = l2_normalize(np.asarray(pl[TASTE], dtype=np.float32))
            if t.shape != asker.vector.shape:
                continue
            rev_mean[i] = float(t @ own)
            rev_photo[i] = float(np.max(asker.photo_vectors @ t)) if len(asker.photo_vectors) else -np.inf

    pids = point_ids(cands)
    kth_b = kth_of_points(store, pids, payloads)  # the stored blocks, else the payloads
    out = rerank(
        RerankInput(
            fwd_mean=fwd_mean,
            fwd_photo=fwd_photo,
            rev_mean=rev_mean,
            rev_photo=rev_photo,
            kth_a=asker_kth(asker, fwd_mean, limit, rs.reciprocity_k),
            kth_b=kth_b,
        ),
        RerankWeights(
            best_photo_weight=rs.best_photo_weight,
            reciprocity_weight=rs.reciprocity_weight,
            reciprocity_temperature=rs.reciprocity_temperature,
            aggregation=rs.aggregation,
        ),
    )
    out = _with_logged_replies(out, payloads, asker.about, rs.aggregation)
    ids = [str(pl.get(USER_ID)) for pl in payloads]
    matches = []
    aud = audience_of(store, pids, ids, exposure)
    for rank, i in enumerate(choose(out.score, k, _policy(settings), ids, None, exposure, aud), start=1):
        b = int(best_idx[i])
        matches.append(
            Match(
                user_id=str(payloads[i].get(USER_ID)),
                score=float(out.score[i]),
                score_a_to_b=float(out.a_to_b[i]),
                score_b_to_a=float(out.b_to_a[i]),
                best_photo_id=photo_ids_scored[b] if b >= 0 else None,
                rank=rank,
            )
        )
    return matches


@dataclass(frozen=True)
class Pool:
    """Stage 1's candidates as the learned stage 2 reads them: point ids in stage-1 order, their rows in the
    served model when stage 1 found them ((n,) int64, -1: not in it; None: stage 2 looks them up), and the
    payloads and vectors they came with (None where none came: ids only, or ``ScoredPoint``s all without
    one)."""

    ids: list[str]
    rows: np.ndarray | None = None
    payloads: list[dict[str, Any] | None] | None = None
    vectors: list[np.ndarray | None] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of(cls, cands: list[ScoredPoint] | Hits | Pool) -> Pool:
        if isinstance(cands, Pool):
            return cands
        if isinstance(cands, Hits):
            return cls(cands.ids)
        vectors = [c.vector for c in cands]  # arrays: compared by identity only
        return cls(
            point_ids(cands),
            payloads=None if bare(cands, "payload") else [c.payload for c in cands],
            vectors=None if all(v is None for v in vectors) else vectors,
        )


def _candidate_user_ids(store: Store, sm: ServedModel, pool: Pool, rows: np.ndarray) -> Sequence[str]:
    """Each candidate's user id: from its payload when it came with one, else from the served model (the
    point id is a hash of the user id, so that mapping never goes stale; ``RowUserIds``, read when asked),
    else one ``retrieve`` for users the model does not know yet."""
    if pool.payloads is None:  # stage 1 on the learned path: ids from the model's rows
        missing = [int(i) for i in np.flatnonzero(rows < 0)]
        got = _retrieved_user_ids(store, [pool.ids[i] for i in missing])
        return RowUserIds(sm, rows, {i: got.get(pool.ids[i], "") for i in missing})
    out = [str((pl or {}).get(USER_ID) or "") for pl in pool.payloads]
    missing = []
    for i in range(len(out)):
        if not out[i]:
            if rows[i] >= 0:
                out[i] = sm.user_ids[rows[i]]
            else:
                missing.append(i)
    got = _retrieved_user_ids(store, [pool.ids[i] for i in missing])
    for i in missing:
        out[i] = got.get(pool.ids[i], "")
    return out


def _retrieved_user_ids(store: Store, pids: list[str]) -> dict[str, str]:
    """``point id -> user id`` of the users points ``pids`` (those stored), in one ``retrieve``."""
    if not pids:
        return {}
    return {p.id: str((p.payload or {}).get(USER_ID)) for p in store.retrieve(USERS, pids)}


def _photo_similarity(store: Store, asker: Asker, pool: Pool, rows: np.ndarray | None = None) -> np.ndarray:
    """cos(v_asker, v_B) per candidate, (n,) float64: from the vectors stage 1 brought when it did, else from
    this process's unit rows (``user_copies.unit_rows``, with the candidates' model ``rows``) or kept vectors,
    else one exact query restricted to the candidates (0 for one no longer stored)."""
    dim = asker.vector.shape[0]
    vs: list[np.ndarray | None] = pool.vectors if pool.vectors is not None else [None] * len(pool.ids)
    if pool.ids and pool.vectors is not None and all(v is not None for v in vs):
        cand_vecs = _stacked_units(vs, dim)  # candidate_vectors of the points
        return np.asarray(cand_vecs @ l2_normalize(asker.vector), dtype=np.float64)
    sm = asker.served
    if rows is not None and sm is not None and pool.vectors is None:
        units = unit_rows(store, sm, pool.ids, rows, dim)
        if units is not None:  # one gather and one product: the same float32 arithmetic as below
            return np.asarray(units @ l2_normalize(asker.vector), dtype=np.float64)
    kept = kept_vectors(store, USERS, pool.ids)  # this process's copy of the users' vectors
    if kept is not None:
        vs = [v if v is not None else kept.get(p) for p, v in zip(pool.ids, vs, strict=True)]
        if all(v is not None and v.shape == (dim,) for v in vs):
            units = l2_normalize(np.stack(vs).astype(np.float32, copy=False))  # type: ignore[arg-type]
        else:  # zero rows where a vector is missing, as candidate_vectors builds them
            units = _stacked_units(vs, dim)
        return np.asarray(units @ l2_normalize(asker.vector), dtype=np.float64)
    ids = pool.ids
    q = Query(
        vector=l2_normalize(asker.vector),
        limit=len(ids),
        filter=Filter(must=(HasId.of(ids),)),
        with_payload=False,
        exact=True,
    )
    sim = {r.id: r.score for r in store.query(USERS, q)}
    return np.array([sim.get(i, 0.0) for i in ids], dtype=np.float64)


def _stacked_units(vectors: list[np.ndarray | None], dim: int) -> np.ndarray:
    """(n, dim) float32 unit rows of ``vectors`` (a zero row where one is missing or not of ``dim``)."""
    out = np.zeros((len(vectors), dim), dtype=np.float32)
    for i, v in enumerate(vectors):
        if v is not None and v.shape == (dim,):
            out[i] = v
    return l2_normalize(out)


def _policy(settings: Settings) -> ExposurePolicy:
    rs = settings.recommend
    return ExposurePolicy(rs.exposure_budget, rs.explore_slots, rs.explore_min)


def _learned_matches(
    store: Store,
    asker: Asker,
    pool: Pool,
    k: int,
    settings: Settings,
    exposure: ExposureLedger | None = None,
) -> list[Match]:
    """Stage 2 with the learned model: P(A likes B) and P(B likes A) from the served statistics
    (``engine.learned.model.served_probabilities_arrays``), fused (``learned_aggregation``: the expected mutual
    match by default), logged replies applied, then the congestion penalty and, with a ledger, the impression
    budget and cold-start slots (``engine.ranking.exposure``); the best photo is the candidate's photo nearest the
    asker's taste."""
    sm = asker.served
    assert asker.model is not None and sm is not None  # noqa: S101 - set together in load_askers
    rs = settings.recommend
    pids = pool.ids
    rows = pool.rows if pool.rows is not None else sm.rows(pids)
    no_payload = pool.payloads is None
    user_ids = _candidate_user_ids(store, sm, pool, rows)
    sides = sm.side(rows)
    photo = _photo_similarity(store, asker, pool, rows)
    a_to_b, b_to_a = served_probabilities_arrays(asker.model, sm.side(np.array([asker.row])), sides, photo)
    fusion, gamma = rs.learned_aggregation, rs.reverse_exponent
    out = RerankResult(score=aggregate(a_to_b, b_to_a, fusion, gamma), a_to_b=a_to_b, b_to_a=b_to_a)
    out = _with_logged_replies_rows(out, sm, no_payload, rows, user_ids, asker.about, fusion, gamma)
    if rs.congestion_capacity > 0:
        received = np.asarray(sides["likes_received"], dtype=np.float64)
        factor = congestion_factor(
            received, float(asker.model.get("periods", 1.0)), rs.congestion_capacity, rs.congestion_strength
        )
        out = RerankResult(score=out.score * factor, a_to_b=out.a_to_b, b_to_a=out.b_to_a)
    received = np.asarray(sides["n"][:, 1], dtype=np.int64)  # decisions received
    order = choose(
        out.score,
        k,
        _policy(settings),
        user_ids,
        received,
        exposure,
        audience_of(store, pids, user_ids, exposure),
    )
    # The photo ids of the returned candidates only (stage 1 brought no payload).
    have: dict[str, dict[str, Any]] = {}
    if pool.payloads is not None:
        for i in order:
            pl = pool.payloads[i]
            if pl and PHOTO_IDS in pl:
                have[pids[i]] = pl
    need = [pids[i] for i in order if pids[i] not in have]
    if need:  # this process's copy, else a retrieve by id (a scroll restricted by HasId cost 5x more)
        have.update(listed_photos(store, need))
    best = _best_photos(store, asker, [{USER_ID: user_ids[i], **(have.get(pids[i]) or {})} for i in order])
    return [
        Match(
            user_id=user_ids[i],
            score=float(out.score[i]),
            score_a_to_b=float(out.a_to_b[i]),
            score_b_to_a=float(out.b_to_a[i]),
            best_photo_id=best[j],
            rank=j + 1,
        )
        for j, i in enumerate(order)
    ]


def _best_photos(store: Store, asker: Asker, payloads: list[dict[str, Any]]) -> list[str | None]:
    """Each candidate's photo nearest the asker's taste: from this process's copy of their photos' vectors
    (``engine.ranking.user_copies``), else one exact query restricted to their photos."""
    photo_owner = {str(ph): i for i, pl in enumerate(payloads) for ph in photo_ids_of(pl)}
    best: list[str | None] = [None] * len(payloads)
    if not photo_owner:
        return best
    taste = asker.pref_taste if asker.pref_taste is not None else asker.taste
    kept = kept_vectors(store, PHOTOS, list(photo_owner))  # this process's copy of the photos' vectors
    if kept is not None:  # the exact query's answer in numpy: the best-scoring stored photo of each owner
        ids = [p for p in photo_owner if p in kept]
        if ids:
            scores = np.stack([kept[p] for p in ids]) @ np.asarray(taste, np.float32)
            for j in np.argsort(-scores, kind="stable"):
                owner = photo_owner[ids[j]]
                if best[owner] is None:
                    best[owner] = ids[j]
        return best
    only = Filter(must=(MatchAny.of(USER_ID, [str(pl.get(USER_ID)) for pl in payloads]),))
    res = store.query(
        PHOTOS, Query(vector=taste, limit=2 * len(photo_owner), filter=only, with_payload=False, exact=True)
    )
    for r in res:  # best first: the first photo seen of each owner is its best
        i = photo_owner.get(r.id)
        if i is not None and best[i] is None:
            best[i] = r.id
    return best


def _with_logged_replies(
    out: RerankResult,
    payloads: list[dict[str, Any]],
    about: dict[str, str],
    aggregation: str,
    reverse_exponent: float = 1.0,
) -> RerankResult:
    """s(B→A) replaced by what B already decided about A, where B did (engine.feedback): 1 for a like,
    0 for a pass (a match is then impossible, so the fused score drops to 0 with the harmonic mean)."""
    if not about:
        return out
    said = [about.get(str(pl.get(USER_ID))) for pl in payloads]
    like = np.array([d == LIKE for d in said], dtype=bool).reshape(len(said))
    passed = np.array([d == PASS for d in said], dtype=bool).reshape(len(said))
    return _replies_replaced(out, like, passed, aggregation, reverse_exponent)


def _with_logged_replies_rows(
    out: RerankResult,
    sm: ServedModel,
    no_payload: bool,
    rows: np.ndarray,
    user_ids: Sequence[str],
    about: dict[str, str],
    aggregation: str,
    reverse_exponent: float = 1.0,
) -> RerankResult:
    """``_with_logged_replies`` from the candidates' model ``rows`` (``served_ids.decided``: one numpy gather,
    no Python step per candidate) where their user ids are the model's (``no_payload``: stage 1 brought no
    payload); users outside the model (-1 rows) by ``user_ids``."""
    if not about:
        return out
    if not no_payload:
        return _with_logged_replies(out, [{USER_ID: u} for u in user_ids], about, aggregation, reverse_exponent)
    code = decided(sm, rows, about)
    for i in np.flatnonzero(rows < 0):
        d = about.get(user_ids[int(i)])
        code[i] = LIKED if d == LIKE else PASSED if d == PASS else code[i]
    return _replies_replaced(out, code == LIKED, code == PASSED, aggregation, reverse_exponent)


def _replies_replaced(
    out: RerankResult, like: np.ndarray, passed: np.ndarray, aggregation: str, reverse_exponent: float
) -> RerankResult:
    """``out`` with s(B→A) set to 1 where ``like`` and 0 where ``passed`` ((n,) bool), fused again; ``out``
    itself when neither holds anywhere."""
    if not (like.any() or passed.any()):
        return out
    b_to_a = out.b_to_a.copy()
    b_to_a[like] = 1.0
    b_to_a[passed] = 0.0
    score = aggregate(out.a_to_b, b_to_a, aggregation, reverse_exponent)
    return RerankResult(score=score, a_to_b=out.a_to_b, b_to_a=b_to_a)
