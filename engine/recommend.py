"""``recommend(user_id)``: filtered ANN candidates from Qdrant, then reciprocal reranking.

Stage 1 (candidates): one filtered query on ``users`` with the asker's taste vector (their own mean vector,
blended with the people they liked when there is a like history), both sides' gender and age constraints,
never the asker nor anyone in ``exclude``; ``recommend.oversample × k`` candidates, with their mean vectors
and only the payload keys the rerank needs.

Stage 2 (rerank, ``engine.rerank``): one more store lookup, restricted to the candidates:

* ``photos``: the asker's taste against every candidate photo (exact scoring over a few hundred points)
  -> each candidate's best photo for the asker.

The reverse direction (the asker's own vector and photos against the candidates' mean vectors) is scored in
numpy from the vectors stage 1 brought back: on Edge that costs less than the query per asker photo it
replaces, since moving scored points into Python costs more than the search itself. Candidates with a
stored ``taste`` (a like history) are scored in the reverse direction with that taste. The final score is
the formula documented in ``engine.rerank``.

With a learned model (``engine.learning``), the per-user statistics come from the process's served copy of
the model (``engine.served_model``, checked against the stored version on every call, so never stale):
stage 1 brings only the candidates' ids, scores and vectors (for the photo signal), no payload; the photo ids
are read for the top ``k`` only. The asker's feedback is read once (``engine.feedback.around``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NoReturn

import numpy as np

from engine.compatibility import age_conditions, compatible_filter, gender_conditions
from engine.errors import InvalidInput, NoUserVector, UserNotFound
from engine.exposure import ExposureLedger, ExposurePolicy, choose
from engine.feedback import LIKE, PASS, around
from engine.filters import Filter, HasId, MatchAny
from engine.likes import TASTE_FIELD, liked_vectors
from engine.preference import congestion_factor, served_probabilities_arrays
from engine.reciprocity import KTH_FIELD, NO_KTH
from engine.rerank import (
    RerankInput,
    RerankResult,
    RerankWeights,
    aggregate,
    best_photo_per_owner,
    l2_normalize,
    rerank,
    taste_vector,
)
from engine.schema import (
    META,
    NO_PHOTOS_KIND,
    PHOTO_IDS,
    PHOTOS,
    USER_ID,
    USERS,
    Profile,
    no_photos_point_id,
    photo_ids_of,
    usable_vector,
    user_point_id,
)
from engine.served_model import ServedModel, served_model
from engine.settings import Settings, load_settings
from engine.store.base import Point, Query, ScoredPoint, Store

log = logging.getLogger(__name__)

# Payload keys stage 1 fetches per candidate: nothing else crosses into Python.
CANDIDATE_FIELDS: tuple[str, ...] = (USER_ID, PHOTO_IDS, KTH_FIELD, TASTE_FIELD)
_QUERY_CHUNK = 64  # stage-1 queries per store round trip in recommend_many


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


@dataclass
class _Asker:
    point_id: str
    profile: Profile
    vector: np.ndarray  # (d,) own mean vector
    taste: np.ndarray  # (d,) unit
    photo_vectors: np.ndarray  # (P, d), P may be 0
    kth_sim: float  # NaN when not computed yet
    # Logged feedback (engine.feedback): who decided what about the asker, and who is blocked either way.
    about: dict[str, str] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)
    # The learned preference model (engine.learning), when one is stored and recommend.model is "learned":
    # its shared part, the served copy (engine.served_model) and the asker's row in it (-1: not in the model).
    model: dict[str, Any] | None = None
    served: ServedModel | None = None
    row: int = -1
    pref_taste: np.ndarray | None = None

    @property
    def taste_is_own(self) -> bool:
        return bool(np.allclose(self.taste, l2_normalize(self.vector), atol=1e-6))


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise InvalidInput(f"k: must be a positive integer, got {k!r}")


def _kth(payload: dict[str, Any]) -> float:
    value = payload.get(KTH_FIELD)
    return float(value) if isinstance(value, int | float) else math.nan


def _raise_missing(store: Store, user_id: str) -> NoReturn:
    """``NoUserVector`` if photos of ``user_id`` are stored but no user vector, else ``UserNotFound``.

    (Ingestion writes no users point for a user without a valid photo; photos whose vectors cancel out are
    the one way to have photos but no user vector.)
    """
    if store.count(PHOTOS, Filter(must=(MatchAny.of(USER_ID, [user_id]),))) > 0:
        raise NoUserVector(f"user {user_id!r} has photos stored but no user vector; nothing to match on")
    try:
        record = store.retrieve(META, [no_photos_point_id(user_id)])
    except InvalidInput:  # no META collection: a store never set up
        record = []
    if record and record[0].payload.get("kind") == NO_PHOTOS_KIND:
        why = ", ".join(record[0].payload.get("reasons") or []) or "none stored"
        raise NoUserVector(
            f"user {user_id!r} is in the metadata, but none of their photos was stored (rejected at the last "
            f"ingestion: {why}; see its report); fix or add photos and run the ingestion again"
        )
    raise UserNotFound(user_id)


def _load_askers(
    store: Store,
    user_ids: Sequence[str],
    settings: Settings,
    likes: Sequence[str] | None = None,
    *,
    need_photos: bool = False,
) -> list[_Asker]:
    """The askers' points and photos in two ``retrieve`` calls (plus one for ``likes``, when given); with a
    learned model the photos only when ``need_photos`` (the photo-only rerank reads them).

    Raises ``UserNotFound`` (first unknown id) or ``NoUserVector``.
    """
    points = store.retrieve(USERS, [user_point_id(u) for u in user_ids], with_vectors=True)
    by_id = {p.id: p for p in points}
    photo_ids: list[str] = []
    found: list[tuple[Point, np.ndarray]] = []
    for u in user_ids:
        p = by_id.get(user_point_id(u))
        if p is None:
            _raise_missing(store, u)
        own = usable_vector(p)
        if own is None:
            raise NoUserVector(f"user {u!r} has no vector (no valid photo was stored); nothing to match on")
        found.append((p, own))
        photo_ids.extend(photo_ids_of(p.payload))
    blend = settings.recommend.taste_blend
    explicit = liked_vectors(store, list(likes), strict=True) if likes else None
    # An explicit like history (likes=) asks for the photo taste of engine.likes, which the model does not use.
    sm = served_model(store) if settings.recommend.model == "learned" and likes is None else None
    # The asker's photos score the reverse direction of the photo-only rerank; the learned model does not
    # read them (one retrieve saved per call).
    if sm is not None and not need_photos:
        photo_ids = []
    photos = {q.id: q for q in store.retrieve(PHOTOS, photo_ids, with_vectors=True)} if photo_ids else {}
    askers = []
    for u, (p, own) in zip(user_ids, found, strict=True):
        payload = p.payload or {}
        if likes is not None:  # an explicit history overrides the stored one, even when empty
            taste = taste_vector(own, explicit, blend)
        elif payload.get(TASTE_FIELD):
            taste = l2_normalize(np.asarray(payload[TASTE_FIELD], dtype=np.float32))
        else:
            taste = l2_normalize(own)
        pv = [usable_vector(photos[i]) for i in photo_ids_of(payload) if i in photos]
        kept = [v for v in pv if v is not None]
        askers.append(
            _Asker(
                point_id=p.id,
                profile=Profile.from_payload(payload, where=f"user {u!r}"),
                vector=own,
                taste=taste,
                photo_vectors=np.stack(kept) if kept else np.zeros((0, own.shape[0]), np.float32),
                kth_sim=_kth(payload),
            )
        )
        if sm is not None:
            a = askers[-1]
            a.model, a.served, a.row = sm.shared, sm, int(sm.index.get(p.id, -1))
            pt = sm.query_taste(a.row)
            if pt is not None:
                t = l2_normalize(pt)
                if t.shape == own.shape and np.any(t):
                    a.pref_taste = t
        askers[-1].about, askers[-1].blocked = around(store, u)  # one read of the asker's feedback
    return askers


def _stage1_query(asker: _Asker, k: int, exclude: Iterable[str], settings: Settings) -> Query:
    limit = k * settings.recommend.oversample
    vector = asker.taste
    fields: tuple[str, ...] | bool = CANDIDATE_FIELDS
    if asker.model is not None:  # the learned taste (likes and passes) picks the candidates the model scores
        limit = max(limit, settings.recommend.learned_pool)
        if asker.pref_taste is not None:
            vector = asker.pref_taste
        # The model's statistics and user ids come from the served copy, by point id: no payload crosses.
        # (The vectors do, for the photo signal: one more exact query restricted to the candidates by id cost
        # more than moving them, measured at 10,000 users.)
        fields = False
    return Query(
        vector=vector,
        limit=limit,
        filter=compatible_filter(asker.profile, exclude=[*exclude, *sorted(asker.blocked)]),
        with_payload=fields,
        with_vectors=True,  # the reverse direction (photo rerank) and the photo signal are scored from them
    )


def _stage1(store: Store, asker: _Asker, q: Query) -> list[ScoredPoint]:
    """Stage 1: the filtered query; with a learned model, also the same query restricted to the users the
    log found most appealing (``popular_ids``, half the pool), in one batch. Appeal is learned from
    received likes, not from the photos, so a taste query alone could miss the people everyone likes."""
    popular = asker.served.popular if asker.served is not None else None
    if popular is None or not popular.ids:
        return store.query(USERS, q)
    flt = q.filter or Filter()
    only = Filter(must=(*flt.must, popular), must_not=flt.must_not)
    second = replace(q, filter=only, limit=max(1, q.limit // 2))
    first, extra = store.query_batch(USERS, [q, second])
    seen = {c.id for c in first}
    return first + [c for c in extra if c.id not in seen]


def _asker_kth(asker: _Asker, stage1: np.ndarray, limit: int, reciprocity_k: int) -> float:
    """A's kth_sim for this very query: stage 1 is A's compatible list ranked by A's taste (minus
    ``exclude``), so its K-th score is exact when it is that long; shorter than asked means everyone
    compatible is in it. Otherwise (K above the stage-1 limit) the stored statistic is used."""
    if len(stage1) >= reciprocity_k:
        return float(np.sort(stage1)[::-1][reciprocity_k - 1])
    if len(stage1) < limit:
        return NO_KTH
    return asker.kth_sim


def _candidate_vectors(cands: list[ScoredPoint], dim: int) -> np.ndarray:
    """Stage-1 candidates' mean vectors, (n, dim) float32 unit rows (zero rows where a backend sent none)."""
    out = np.zeros((len(cands), dim), dtype=np.float32)
    for i, c in enumerate(cands):
        if c.vector is not None and c.vector.shape == (dim,):
            out[i] = c.vector
    return l2_normalize(out)


def _rerank_candidates(
    store: Store,
    asker: _Asker,
    cands: list[ScoredPoint],
    k: int,
    limit: int,
    settings: Settings,
    exposure: ExposureLedger | None = None,
) -> list[Match]:
    """Stage 2 for one asker: one lookup of the candidates' photos, the numpy rerank, the top ``k``
    (``engine.exposure`` with a ledger)."""
    n = len(cands)
    if n == 0:
        return []
    if asker.model is not None:
        return _learned_matches(store, asker, cands, k, settings, exposure)
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
    cand_vecs = _candidate_vectors(cands, asker.vector.shape[0])
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
        if pl.get(TASTE_FIELD):
            t = l2_normalize(np.asarray(pl[TASTE_FIELD], dtype=np.float32))
            if t.shape != asker.vector.shape:
                continue
            rev_mean[i] = float(t @ own)
            rev_photo[i] = float(np.max(asker.photo_vectors @ t)) if len(asker.photo_vectors) else -np.inf

    kth_b = np.array([_kth(pl) for pl in payloads], dtype=np.float64)
    out = rerank(
        RerankInput(
            fwd_mean=fwd_mean,
            fwd_photo=fwd_photo,
            rev_mean=rev_mean,
            rev_photo=rev_photo,
            kth_a=_asker_kth(asker, fwd_mean, limit, rs.reciprocity_k),
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
    for rank, i in enumerate(choose(out.score, k, _policy(settings), ids, None, exposure), start=1):
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


def _candidate_user_ids(store: Store, sm: ServedModel, cands: list[ScoredPoint], rows: np.ndarray) -> list[str]:
    """Each candidate's user id: from its payload when it came with one, else from the served model (the
    point id is a hash of the user id, so that mapping never goes stale), else one ``retrieve`` for users the
    model does not know yet."""
    out = [str((c.payload or {}).get(USER_ID) or "") for c in cands]
    missing = []
    for i in range(len(cands)):
        if not out[i]:
            if rows[i] >= 0:
                out[i] = sm.user_ids[rows[i]]
            else:
                missing.append(i)
    if missing:
        got = {p.id: str((p.payload or {}).get(USER_ID)) for p in store.retrieve(USERS, [cands[i].id for i in missing])}
        for i in missing:
            out[i] = got.get(cands[i].id, "")
    return out


def _photo_similarity(store: Store, asker: _Asker, cands: list[ScoredPoint]) -> np.ndarray:
    """cos(v_asker, v_B) per candidate, (n,) float64: from the vectors stage 1 brought when it did, else one
    exact query restricted to the candidates (0 for one no longer stored)."""
    if cands and all(c.vector is not None for c in cands):
        cand_vecs = _candidate_vectors(cands, asker.vector.shape[0])
        return np.asarray(cand_vecs @ l2_normalize(asker.vector), dtype=np.float64)
    ids = [c.id for c in cands]
    q = Query(
        vector=l2_normalize(asker.vector),
        limit=len(ids),
        filter=Filter(must=(HasId.of(ids),)),
        with_payload=False,
        exact=True,
    )
    sim = {r.id: r.score for r in store.query(USERS, q)}
    return np.array([sim.get(i, 0.0) for i in ids], dtype=np.float64)


def _policy(settings: Settings) -> ExposurePolicy:
    rs = settings.recommend
    return ExposurePolicy(rs.exposure_budget, rs.explore_slots, rs.explore_min)


def _learned_matches(
    store: Store,
    asker: _Asker,
    cands: list[ScoredPoint],
    k: int,
    settings: Settings,
    exposure: ExposureLedger | None = None,
) -> list[Match]:
    """Stage 2 with the learned model: P(A likes B) and P(B likes A) from the served statistics
    (``engine.preference.served_probabilities_arrays``), fused (``learned_aggregation``: the expected mutual
    match by default), logged replies applied, then the congestion penalty and, with a ledger, the impression
    budget and cold-start slots (``engine.exposure``); the best photo is the candidate's photo nearest the
    asker's taste."""
    sm = asker.served
    assert asker.model is not None and sm is not None  # noqa: S101 - set together in _load_askers
    rs = settings.recommend
    rows = sm.rows([c.id for c in cands])
    user_ids = _candidate_user_ids(store, sm, cands, rows)
    payloads: list[dict[str, Any]] = [{USER_ID: u} for u in user_ids]
    sides = sm.side(rows)
    photo = _photo_similarity(store, asker, cands)
    a_to_b, b_to_a = served_probabilities_arrays(asker.model, sm.side(np.array([asker.row])), sides, photo)
    fusion, gamma = rs.learned_aggregation, rs.reverse_exponent
    out = RerankResult(score=aggregate(a_to_b, b_to_a, fusion, gamma), a_to_b=a_to_b, b_to_a=b_to_a)
    out = _with_logged_replies(out, payloads, asker.about, fusion, gamma)
    if rs.congestion_capacity > 0:
        received = np.asarray(sides["likes_received"], dtype=np.float64)
        factor = congestion_factor(
            received, float(asker.model.get("periods", 1.0)), rs.congestion_capacity, rs.congestion_strength
        )
        out = RerankResult(score=out.score * factor, a_to_b=out.a_to_b, b_to_a=out.b_to_a)
    received = np.asarray(sides["n"][:, 1], dtype=np.int64)  # decisions received
    order = choose(out.score, k, _policy(settings), user_ids, received, exposure)
    top = [cands[i] for i in order]
    # The photo ids of the returned candidates only (stage 1 brought no payload).
    have = {c.id: c.payload for c in top if c.payload and PHOTO_IDS in c.payload}
    need = [c.id for c in top if c.id not in have]
    if need:  # a retrieve by id (a scroll restricted by HasId cost 5x more, measured at 10,000 users)
        have.update({p.id: p.payload for p in store.retrieve(USERS, need)})
    best = _best_photos(store, asker, [{USER_ID: user_ids[i], **(have.get(cands[i].id) or {})} for i in order])
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


def _best_photos(store: Store, asker: _Asker, payloads: list[dict[str, Any]]) -> list[str | None]:
    """Each candidate's photo nearest the asker's taste (one exact query restricted to their photos)."""
    photo_owner = {str(ph): i for i, pl in enumerate(payloads) for ph in photo_ids_of(pl)}
    best: list[str | None] = [None] * len(payloads)
    if not photo_owner:
        return best
    taste = asker.pref_taste if asker.pref_taste is not None else asker.taste
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
    b_to_a = out.b_to_a.copy()
    known = False
    for i, pl in enumerate(payloads):
        d = about.get(str(pl.get(USER_ID)))
        if d == LIKE:
            b_to_a[i], known = 1.0, True
        elif d == PASS:
            b_to_a[i], known = 0.0, True
    if not known:
        return out
    score = aggregate(out.a_to_b, b_to_a, aggregation, reverse_exponent)
    return RerankResult(score=score, a_to_b=out.a_to_b, b_to_a=b_to_a)


def _with_store(store: Store | None, settings: Settings | None) -> tuple[Store, Settings, bool]:
    settings = settings if settings is not None else load_settings()
    if store is not None:
        return store, settings, False
    from engine.store import open_store

    return open_store(settings, create=False), settings, True


def recommend(
    user_id: str,
    k: int = 20,
    *,
    exclude: Iterable[str] = (),
    likes: Sequence[str] | None = None,
    store: Store | None = None,
    settings: Settings | None = None,
    exposure: ExposureLedger | None = None,
) -> list[Match]:
    """The ``k`` best reciprocal matches for ``user_id``, best first (fewer if fewer pass the filters).

    ``exclude``: user ids never to return (already seen). Users blocked or reported either way in the stored
    feedback (``engine.feedback``) are never returned, and a candidate's logged decision about ``user_id``
    replaces the model's s(candidate→user): 1 for a like, 0 for a pass. ``likes``: user ids this user liked; they
    override the stored like history (``engine.likes``). Without ``store`` the store named by ``settings``
    (default: from the environment) is opened and closed again. ``exposure``: the serving process's
    ``ExposureLedger``; the impression budget and cold-start slots (``engine.exposure``) read it, and the
    returned list is recorded in it.
    Raises ``UserNotFound`` (unknown ``user_id`` or liked id), ``NoUserVector`` (no valid photo),
    ``InvalidInput`` (a ``ValueError``) for ``k <= 0``, ``StoreUnavailable``.
    """
    _check_k(k)
    exclude = [str(u) for u in exclude]
    st, settings, owned = _with_store(store, settings)
    try:
        asker = _load_askers(st, [user_id], settings, likes)[0]
        q = _stage1_query(asker, k, exclude, settings)
        return _rerank_candidates(st, asker, _stage1(st, asker, q), k, q.limit, settings, exposure)
    finally:
        if owned:
            st.close()


def recommend_many(
    user_ids: Sequence[str],
    k: int = 20,
    *,
    store: Store | None = None,
    settings: Settings | None = None,
    exposure: ExposureLedger | None = None,
) -> dict[str, list[Match]]:
    """``recommend`` for many users (each with their stored likes): askers loaded and stage-1 queries sent
    in batches (``exposure`` as in ``recommend``, in ``user_ids`` order). Raises like ``recommend`` on the
    first unknown user or user without a vector."""
    _check_k(k)
    st, settings, owned = _with_store(store, settings)
    out: dict[str, list[Match]] = {}
    try:
        for start in range(0, len(user_ids), _QUERY_CHUNK):
            chunk = list(user_ids[start : start + _QUERY_CHUNK])
            askers = _load_askers(st, chunk, settings)
            queries = [_stage1_query(a, k, (), settings) for a in askers]  # blocks: from each asker
            if any(a.model is not None and a.model.get("popular_ids") for a in askers):
                results = [_stage1(st, a, q) for a, q in zip(askers, queries, strict=True)]
            else:
                results = st.query_batch(USERS, queries)
            for u, a, q, cands in zip(chunk, askers, queries, results, strict=True):
                out[u] = _rerank_candidates(st, a, cands, k, q.limit, settings, exposure)
        return out
    finally:
        if owned:
            st.close()


def score_candidates(
    user_id: str,
    candidate_ids: Sequence[str],
    *,
    store: Store,
    settings: Settings,
    likes: Sequence[str] | None = None,
    use_stored_tastes: bool = True,
) -> dict[str, Match]:
    """Stage 2 of ``recommend()`` on given candidates, without stage 1's filter: the score the engine ranks by.

    For replaying logged impressions and explaining one pair. Returns a ``Match`` per candidate that is stored
    with a usable vector (others are left out), ranked among the given candidates. The asker's K-th
    similarity is the stored one: given candidates are not the asker's own stage-1 list.
    ``use_stored_tastes=False`` scores the reverse direction from the candidates' own vectors, ignoring their
    stored like histories (a replay of logged likes must not see them again through those histories).
    Raises ``UserNotFound`` / ``NoUserVector`` for the asker, ``StoreUnavailable``.
    """
    asker = _load_askers(store, [user_id], settings, likes, need_photos=not use_stored_tastes)[0]
    if not use_stored_tastes:  # the learned model is fitted on the logs too: a replay must not see them again
        asker.model, asker.served = None, None
    uniq = list(dict.fromkeys(str(u) for u in candidate_ids))
    cands: list[ScoredPoint] = []
    for p in store.retrieve(USERS, [user_point_id(u) for u in uniq], with_vectors=True):
        v = usable_vector(p)
        if v is None:
            continue
        v = l2_normalize(v)
        payload = p.payload or {}
        keep = {k: payload[k] for k in CANDIDATE_FIELDS if k in payload and (use_stored_tastes or k != TASTE_FIELD)}
        # With its vector, as stage 1 returns candidates (the reverse direction is scored from it).
        cands.append(ScoredPoint(id=p.id, score=float(asker.taste @ v), payload=keep, vector=v))
    # Stage 2 takes the asker's K-th similarity from the candidate list when it holds K or more and the list
    # is a stage-1 list (limit > 0); chunks below K with limit 0 make it use the stored value.
    chunk = max(1, settings.recommend.reciprocity_k - 1)
    scored: list[Match] = []
    for start in range(0, len(cands), chunk):
        part = cands[start : start + chunk]
        scored.extend(_rerank_candidates(store, asker, part, len(part), 0, settings))
    scored.sort(key=lambda m: -m.score)
    return {m.user_id: replace(m, rank=i + 1) for i, m in enumerate(scored)}


def explain_empty(user_id: str, *, exclude: Iterable[str] = (), store: Store) -> str:
    """Why no one passes ``user_id``'s filters: counts after each constraint, in one sentence.

    Raises ``UserNotFound`` for an unknown user.
    """
    pts = store.retrieve(USERS, [user_point_id(user_id)])
    if not pts:
        raise UserNotFound(user_id)
    p = Profile.from_payload(pts[0].payload, where=f"user {user_id!r}")
    me = HasId.of([user_point_id(user_id)])
    others = store.count(USERS, Filter(must_not=(me,)))
    by_gender = store.count(USERS, Filter(must=gender_conditions(p), must_not=(me,)))
    by_age = store.count(USERS, Filter(must=(*gender_conditions(p), *age_conditions(p)), must_not=(me,)))
    who = f"{user_id!r} ({p.gender}, {p.age}, seeking {'/'.join(p.seeking)} aged {p.age_min}-{p.age_max})"
    if others == 0:
        return f"no other user is stored besides {who}"
    if by_gender == 0:
        return f"none of the {others} other users is of a sought gender and seeks a {p.gender} user ({who})"
    if by_age == 0:
        return (
            f"{by_gender} users match {who} by gender both ways, but none is aged {p.age_min}-{p.age_max} "
            f"and accepts age {p.age}"
        )
    return f"all {by_age} users compatible with {who} are excluded (already seen or blocked)"


__all__ = ["Match", "explain_empty", "recommend", "recommend_many"]
