"""``recommend(user_id)``: filtered ANN candidates from Qdrant, then reciprocal reranking.

Stage 1 (candidates): one filtered query on ``users`` with the asker's taste vector (their own mean vector,
blended with the people they liked when there is a like history), both sides' gender and age constraints,
never the asker nor anyone in ``exclude``; ``recommend.oversample × k`` candidates, with their mean vectors
and only the payload keys the rerank needs.

Stage 2 (rerank, ``engine.ranking.rerank``): one more store lookup, restricted to the candidates:

* ``photos``: the asker's taste against every candidate photo (exact scoring over a few hundred points)
  -> each candidate's best photo for the asker.

The reverse direction (the asker's own vector and photos against the candidates' mean vectors) is scored in
numpy from the vectors stage 1 brought back: on Edge that costs less than the query per asker photo it
replaces, since moving scored points into Python costs more than the search itself. Candidates with a
stored ``taste`` (a like history) are scored in the reverse direction with that taste. The final score is
the formula documented in ``engine.ranking.rerank``. The asker is loaded by ``engine.ranking.askers``; stage 2 is
``engine.ranking.matches``.

With a learned model (``engine.learned.rebuild``), the per-user statistics come from the process's served copy of
the model (``engine.learned.served``, checked against the stored version, so never stale): stage 1 brings only
the candidates' ids and scores (and vectors, for the photo signal, where the store allows no per-process
copy); the photo ids are read for the top ``k`` only. Where the store is embedded (``Store.write_count`` is
not None: this process is its only writer), what a call reads besides stage 1's first query comes from
per-process copies keyed on that count, so never stale either: the asker's feedback
(``engine.ranking.feedback_cache``), the popular users' leg of stage 1, the candidates' vectors, the top ``k``'s photo
ids and photos' vectors (``engine.ranking.user_copies``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from engine.compatibility import age_conditions, compatible_filter, gender_conditions
from engine.errors import UserNotFound
from engine.filters import Filter, HasId
from engine.ranking.askers import Asker, check_k, load_askers
from engine.ranking.exposure import ExposureLedger
from engine.ranking.matches import Match, Pool, rerank_candidates
from engine.ranking.rerank import (
    l2_normalize,
)
from engine.ranking.served_ids import point_ids
from engine.ranking.user_copies import popular_leg, popular_rows
from engine.schema import (
    KTH_SIM,
    PHOTO_IDS,
    TASTE,
    USER_ID,
    USERS,
    Profile,
    usable_vector,
    user_point_id,
)
from engine.settings import Settings, load_settings
from engine.store.base import Query, ScoredPoint, Store

log = logging.getLogger(__name__)

# Payload keys stage 1 fetches per candidate: nothing else crosses into Python.
CANDIDATE_FIELDS: tuple[str, ...] = (USER_ID, PHOTO_IDS, KTH_SIM, TASTE)
_QUERY_CHUNK = 64  # stage-1 queries per store round trip in recommend_many
FRESH_PER_SLOT = 25  # stage 1's fresh leg: candidates per cold-start slot (engine.ranking.exposure)


def _stage1_query(asker: Asker, k: int, exclude: Iterable[str], settings: Settings) -> Query:
    limit = k * settings.recommend.oversample
    vector = asker.taste
    fields: tuple[str, ...] | bool = CANDIDATE_FIELDS
    vectors = True
    if asker.model is not None:  # the learned taste (likes and passes) picks the candidates the model scores
        limit = max(limit, settings.recommend.learned_pool)
        if asker.pref_taste is not None:
            vector = asker.pref_taste
        # The model's statistics and user ids come from the served copy, by point id: no payload crosses.
        # The vectors (for the photo signal) come from this process's copy where the store allows one
        # (engine.ranking.user_copies), else with the results (one more exact query restricted to the candidates by
        # id cost more than moving them, measured at 10,000 users).
        fields = False
        vectors = not asker.vectors_kept
    return Query(
        vector=vector,
        limit=limit,
        filter=compatible_filter(asker.profile, exclude=[*exclude, *sorted(asker.blocked)]),
        with_payload=fields,
        with_vectors=vectors,  # the reverse direction (photo rerank) and the photo signal are scored from them
    )


def _fresh_query(asker: Asker, q: Query, settings: Settings, exposure: ExposureLedger | None) -> Query | None:
    """Stage 1's fresh leg: the same query restricted to the model's cold-start users (``ServedModel.fresh_ids``),
    ``FRESH_PER_SLOT`` per cold-start slot; None when the slots are off, no ledger is passed (they need one)
    or nobody is fresh. The taste query alone brings the candidates nearest the asker's taste, and a
    newcomer far from every taste would be in no asker's pool, so no slot could reach them
    (tests/engine/test_rerank_exposure.py). In the 2,000-user simulation the newcomers were in the pools
    already (the leg changed nothing there: 0.74 of them shown k times with or without it); what got them
    their impressions was the slots' priority (``engine.ranking.exposure.select``; docs/results.md)."""
    rs, sm = settings.recommend, asker.served
    if sm is None or exposure is None or rs.explore_slots <= 0:
        return None
    fresh = sm.fresh_ids(rs.explore_min)
    return _restricted(q, fresh, FRESH_PER_SLOT * rs.explore_slots) if fresh.ids else None


def _restricted(q: Query, only: HasId, limit: int) -> Query:
    """``q`` with ``only`` added to its filter's conditions and ``limit`` candidates (stage 1's extra legs)."""
    flt = q.filter or Filter()
    return replace(q, filter=Filter(must=(*flt.must, only), must_not=flt.must_not), limit=limit)


def _stage1(store: Store, asker: Asker, q: Query, fresh: Query | None = None) -> list[ScoredPoint] | Pool:
    """Stage 1: the filtered query; with a learned model, also the same query restricted to the users the
    log found most appealing (``popular_ids``, half the pool): answered in numpy from this process's copy of
    those users (``engine.ranking.user_copies``) where the store allows one, else in one batch with the first. Appeal is
    learned from received likes, not from the photos, so a taste query alone could miss the people everyone
    likes. ``fresh`` (``_fresh_query``): the cold-start leg, in the same batch as the first query.

    Where ``q`` asks for neither payloads nor vectors (the learned path on an embedded store) the answer is a
    ``Pool``: the ids (``Store.query_hits``: no ``ScoredPoint`` per candidate) with their served-model rows,
    else ``ScoredPoint``s; the same candidates in the same order either way."""
    sm = asker.served
    batch = [q] if fresh is None else [q, fresh]
    popular = _restricted(q, sm.popular, max(1, q.limit // 2)) if sm is not None and sm.popular.ids else None
    if sm is not None and asker.model is not None and not q.with_payload and not q.with_vectors:
        kept = popular_rows(store, sm, popular) if popular is not None else None
        if popular is not None and kept is None:  # no per-process copy: the store answers it in the same batch
            batch.append(popular)
        found = [(h.ids, sm.rows(h.ids)) for h in store.query_hits(USERS, batch)]
        return _merged_pool(len(sm.point_ids), found if kept is None else [*found, kept])
    local = popular_leg(store, sm, popular) if sm is not None and popular is not None else None
    if popular is not None and local is None:
        batch.append(popular)
    legs = store.query_batch(USERS, batch) if len(batch) > 1 else [store.query(USERS, q)]
    if local is not None:
        legs = [*legs, local]
    if len(legs) == 1:
        return legs[0]
    out, seen = list(legs[0]), set(point_ids(legs[0]))
    for leg in legs[1:]:
        for c in leg:
            if c.id not in seen:
                seen.add(c.id)
                out.append(c)
    return out


def _merged_pool(n_rows: int, legs: list[tuple[list[str], np.ndarray]]) -> Pool:
    """The legs' (point ids, model rows) merged as ``_stage1`` merges points: the first leg, then each later
    leg's candidates not seen before, in order. Seen by model row (one boolean mask over the model's
    ``n_rows``; a row is one point id) and by id for the few not in the model (-1), so the ids are not hashed
    again. A leg holds no id twice (each is one store answer or the popular copy's)."""
    ids, rows = legs[0]
    if len(legs) == 1:
        return Pool(ids, rows)
    out_ids, out_rows = list(ids), [rows]
    seen = np.zeros(n_rows, bool)
    seen[rows[rows >= 0]] = True
    outside = {ids[i] for i in np.flatnonzero(rows < 0).tolist()}
    for leg_ids, leg_rows in legs[1:]:
        inside = leg_rows >= 0
        new = np.ones(len(leg_ids), bool)
        new[inside] = ~seen[leg_rows[inside]]
        for i in np.flatnonzero(~inside).tolist():
            new[i] = leg_ids[i] not in outside
        keep = np.flatnonzero(new)
        kept_ids = leg_ids if len(keep) == len(leg_ids) else [leg_ids[i] for i in keep.tolist()]
        kept_rows = leg_rows[keep]
        seen[kept_rows[kept_rows >= 0]] = True
        outside.update(kept_ids[i] for i in np.flatnonzero(kept_rows < 0).tolist())
        out_ids.extend(kept_ids)
        out_rows.append(kept_rows)
    return Pool(out_ids, np.concatenate(out_rows))


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
    ``ExposureLedger``; the impression budget and cold-start slots (``engine.ranking.exposure``) read it, and the
    returned list is recorded in it.
    Raises ``UserNotFound`` (unknown ``user_id`` or liked id), ``NoUserVector`` (no valid photo),
    ``InvalidInput`` (a ``ValueError``) for ``k <= 0``, ``StoreUnavailable``.
    """
    check_k(k)
    exclude = [str(u) for u in exclude]
    st, settings, owned = _with_store(store, settings)
    try:
        asker = load_askers(st, [user_id], settings, likes)[0]
        q = _stage1_query(asker, k, exclude, settings)
        cands = _stage1(st, asker, q, _fresh_query(asker, q, settings, exposure))
        return rerank_candidates(st, asker, cands, k, q.limit, settings, exposure)
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
    check_k(k)
    st, settings, owned = _with_store(store, settings)
    out: dict[str, list[Match]] = {}
    try:
        for start in range(0, len(user_ids), _QUERY_CHUNK):
            chunk = list(user_ids[start : start + _QUERY_CHUNK])
            askers = load_askers(st, chunk, settings)
            queries = [_stage1_query(a, k, (), settings) for a in askers]  # blocks: from each asker
            fresh = [_fresh_query(a, q, settings, exposure) for a, q in zip(askers, queries, strict=True)]
            results: list[list[ScoredPoint] | Pool]
            if any(a.model is not None and a.model.get("popular_ids") for a in askers) or any(fresh):
                results = [_stage1(st, a, q, f) for a, q, f in zip(askers, queries, fresh, strict=True)]
            else:
                results = [*st.query_batch(USERS, queries)]
            for u, a, q, cands in zip(chunk, askers, queries, results, strict=True):
                out[u] = rerank_candidates(st, a, cands, k, q.limit, settings, exposure)
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
    asker = load_askers(store, [user_id], settings, likes, need_photos=not use_stored_tastes)[0]
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
        keep = {k: payload[k] for k in CANDIDATE_FIELDS if k in payload and (use_stored_tastes or k != TASTE)}
        # With its vector, as stage 1 returns candidates (the reverse direction is scored from it).
        cands.append(ScoredPoint(id=p.id, score=float(asker.taste @ v), payload=keep, vector=v))
    # Stage 2 takes the asker's K-th similarity from the candidate list when it holds K or more and the list
    # is a stage-1 list (limit > 0); chunks below K with limit 0 make it use the stored value.
    chunk = max(1, settings.recommend.reciprocity_k - 1)
    scored: list[Match] = []
    for start in range(0, len(cands), chunk):
        part = cands[start : start + chunk]
        scored.extend(rerank_candidates(store, asker, part, len(part), 0, settings))
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


__all__ = ["Match", "explain_empty", "recommend", "recommend_many", "score_candidates"]
