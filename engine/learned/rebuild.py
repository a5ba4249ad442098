"""The learned preference model (``engine.learned.model``) in the store: the full rebuild, the incremental update
after a feedback batch, and what serving reads.

Where it lives: ``engine.learned.served`` (columnar blocks in the ``matcher_meta`` collection: the shared part —
weights, standardisation, cold-start row, reduced space and taste basis — and per-user rows of ~70 statistics
plus the 64-d taste coordinates). ``recommend()`` serves it through ``served_model``'s per-store copy, which is
checked against the stored version on every call. A store without a model serves the photo-only engine.

``rebuild_preferences`` is the batch job (``matcher rebuild-model``, progress bar over the log it reads): one
scroll of ``users`` with vectors, the log's columns (``engine.feedback_blocks``: a few large blocks; every
``feedback`` payload only when they are missing or stale), the fit in numpy,
then the blocks (a few large writes, not one partial payload update per user). Blocks and reports are not
preferences and stay out of the fit (they exclude for good in ``recommend()``); likes and passes of users
deleted since are dropped.

``update_preferences`` is the incremental path (run by ``engine.feedback.record_feedback`` and
``delete_feedback_of``): the users a batch touched get their pickiness, appeal, taste and decision counts
recomputed from all their decisions, exactly as the full fit computes them, against the last rebuild's like
rate, population taste, reduced space and taste basis; one patch block holds only their rows (untouched users
are not rewritten). The weights, the standardisation, the latent factors and the twin tastes (which are sums of the
factors) stay as the last full rebuild left them until the next one (new users get zero factors and the cold
row's twin taste, as a cold user has). A model stored by the version before the twin features (rows without
their columns) is updated in its own layout and served as it was fitted.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from engine.errors import InvalidInput
from engine.feedback_blocks import log_rows
from engine.filters import Filter, MatchAny
from engine.learned.fit import fit_preference, like_logit, shrunk_taste
from engine.learned.model import FEATURES, PreferenceConfig, PreferenceModel
from engine.learned.served import (
    CHUNK_ROWS,
    MODEL_KEY,
    MODEL_POINT_ID,
    Layout,
    block_payload,
    chunk_point_id,
    encode,
    patch_point_id,
    read_shared,
    read_version,
    served_model,
    stats_row,
    write_blocks,
    write_version,
)
from engine.schema import (
    FEEDBACK,
    LEGACY_MODEL_FIELDS,
    LEGACY_MODEL_STATS,
    META,
    USER_ID,
    USERS,
    usable_vector,
    user_point_id,
)
from engine.settings import Settings
from engine.store.base import Point, Store

log = logging.getLogger(__name__)

_META_VECTOR = np.ones(1, dtype=np.float32)


@dataclass(frozen=True)
class RebuildReport:
    users: int
    events: int  # likes and passes the model was fitted on
    seconds: dict[str, float]
    weights: dict[str, float]


@dataclass(frozen=True)
class UpdateReport:
    """What ``update_preferences`` did: users whose rows it rewrote, the decisions it read, the generation."""

    users: int
    events: int
    gen: int


def _config(settings: Settings) -> PreferenceConfig:
    p = settings.preference
    return PreferenceConfig(
        prior_weight=p.prior_weight, taste_shrink=p.taste_shrink, rank=p.rank, factors=p.factors,
        als_iterations=p.als_iterations, als_ridge=p.als_ridge, holdout=p.holdout, l2=p.l2, seed=p.seed,
    )  # fmt: skip


def _users(store: Store) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """(user ids, point ids, (n, d) float32 unit vectors) of every user with a usable vector, and the points
    still carrying the payloads an older version of this module wrote (``pref``, ``pref_taste``)."""
    ids: list[str] = []
    pids: list[str] = []
    vecs: list[np.ndarray] = []
    legacy: list[str] = []
    for p in store.scroll_payload(USERS, (USER_ID, LEGACY_MODEL_STATS), with_vectors=True, batch_size=2048):
        if LEGACY_MODEL_STATS in (p.payload or {}):
            legacy.append(p.id)
        v = usable_vector(p)
        if v is None:
            continue
        ids.append(str((p.payload or {}).get(USER_ID)))
        pids.append(p.id)
        vecs.append(v)
    if not vecs:
        return ids, pids, np.zeros((0, 0), np.float32), legacy
    vectors = np.stack(vecs).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return ids, pids, vectors, legacy


def rebuild_preferences(store: Store, settings: Settings, *, batch_size: int = CHUNK_ROWS) -> RebuildReport:
    """Fit the preference model on every stored like and pass and write it into the store (full rebuild).

    Users without a usable vector are left out (they cannot be recommended). Raises ``StoreUnavailable``.
    """
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    ids, pids, vectors, legacy = _users(store)
    n = len(ids)
    if n == 0:
        return RebuildReport(0, 0, {"read_s": time.perf_counter() - t}, {})
    index = {u: i for i, u in enumerate(ids)}
    try:
        total = store.count(FEEDBACK)
    except InvalidInput:
        total = 0
    bar = tqdm(total=total, desc="model rebuild: reading the log", unit="event", disable=not settings.progress)
    # The log's columns (engine.feedback_blocks): a few blocks, or every payload once when they are missing
    # or stale (then stored again). The same arrays, in the same order, as engine.feedback.decision_arrays.
    rows = log_rows(store, progress=bar, count=total if total else None)  # one count (Edge walks the log)
    bar.close()
    if rows is None:  # a store set up before the feedback collection existed
        viewer, cand, ts = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
        like = np.zeros(0, bool)
    else:
        viewer, cand, like, ts = rows.arrays(index)
    seconds["read_s"] = time.perf_counter() - t

    t = time.perf_counter()
    log.info("model rebuild: fitting on %d decisions of %d users", viewer.size, n)
    model = fit_preference(
        ids, vectors, viewer, cand, like, config=_config(settings), ts=ts, period_s=settings.preference.period_s
    )
    seconds["fit_s"] = time.perf_counter() - t

    t = time.perf_counter()
    write_model(store, model, pids, settings=settings, batch_size=batch_size)
    if legacy:  # once per store: the per-user payloads of the old format (half a KB to 5 KB per user)
        log.info("model rebuild: removing the old per-user model payloads of %d users", len(legacy))
        for s in range(0, len(legacy), 1024):
            store.set_payload(USERS, {pid: dict.fromkeys(LEGACY_MODEL_FIELDS) for pid in legacy[s : s + 1024]})
    seconds["write_s"] = time.perf_counter() - t
    weights = dict(zip(("bias", *FEATURES), model.weights.round(4).tolist(), strict=True))
    return RebuildReport(n, int(viewer.size), seconds, weights)


def model_features() -> tuple[str, ...]:
    return FEATURES


def _stats(model: PreferenceModel, layout: Layout) -> np.ndarray:
    u = model.users
    n = np.column_stack([u.n_given, u.n_received, u.likes_received]).astype(np.float64)
    out = np.column_stack([u.pickiness, u.appeal, u.taste, u.vproj, u.viewer_f, u.item_f, n, u.twin_f])
    if out.shape[1] != layout.width:
        raise InvalidInput(f"preference model: {out.shape[1]} statistics per user, layout expects {layout.width}")
    return out


def write_model(
    store: Store, model: PreferenceModel, point_ids: list[str], *, settings: Settings, batch_size: int = CHUNK_ROWS
) -> str:
    """Store ``model`` (rows in ``model.user_ids`` order, users points ``point_ids``) as a new version: the
    blocks, the shared part, then the version point; then the previous model's blocks are deleted. Returns
    the new model id."""
    old_version, old_shared = read_version(store), read_shared(store)
    model_id = str(uuid.uuid4())
    u = model.users
    layout = Layout(u.taste.shape[1], u.viewer_f.shape[1], u.twin_f.shape[1])
    stats = _stats(model, layout)
    taste = u.taste_reduced.astype(np.float32)
    starts = list(range(0, len(point_ids), batch_size))
    bar = tqdm(starts, desc="model rebuild: writing", unit="block", disable=not settings.progress)
    for i, s in enumerate(bar):
        e = s + batch_size
        write_blocks(store, [(chunk_point_id(model_id, i), block_payload(
            point_ids[s:e], model.user_ids[s:e], stats[s:e], taste[s:e]))])  # fmt: skip
    shared = model.global_payload()
    # The users the log finds most appealing (received likes, smoothed): stage 1's second, restricted query.
    top = np.argsort(-u.appeal, kind="stable")[: settings.preference.popular]
    shared.update(
        model_id=model_id,
        rank=layout.rank,
        factors=layout.factors,
        twin=layout.twin,
        chunks=len(starts),
        space=encode(u.space.astype(np.float64)),
        basis=encode(u.basis.astype(np.float64)),
        taste_prior=u.taste_prior.astype(np.float64).tolist(),
        prior_weight=settings.preference.prior_weight,
        taste_shrink=settings.preference.taste_shrink,
        popular_ids=[point_ids[i] for i in top.tolist() if u.n_received[i] > 0],
    )
    store.upsert(META, [Point(id=MODEL_POINT_ID, vector=_META_VECTOR, payload={MODEL_KEY: shared})])
    write_version(store, model_id, 0)
    if old_version is not None and old_shared is not None and old_shared.get("model_id") == old_version[0]:
        old_id, old_gen, _ = old_version
        stale = [chunk_point_id(old_id, i) for i in range(int(old_shared.get("chunks", 0)))]
        stale += [patch_point_id(old_id, g) for g in range(1, old_gen + 1)]
        store.delete(META, stale)
    return model_id


def load_model_global(store: Store) -> dict[str, Any] | None:
    """The shared part of the stored model, or None when no model was built (the photo-only engine)."""
    sm = served_model(store)
    return sm.shared if sm is not None else None


def _vectors_of(store: Store, user_ids: list[str]) -> dict[str, np.ndarray]:
    """``user_id -> unit float32 vector`` of the named users that are stored with a usable vector."""
    out: dict[str, np.ndarray] = {}
    for s in range(0, len(user_ids), 1024):
        # Vectors only: the payloads (a third to half of the read, measured at 10,000 users) stay in the store;
        # the point id is a hash of the user id, so the ids asked for name the users.
        part = {user_point_id(x): x for x in user_ids[s : s + 1024]}
        got = [(part[p], v) for p, v in store.retrieve_vectors(USERS, list(part)).items() if p in part and v.size]
        if not got:
            continue
        dim = got[0][1].shape[0]
        got = [(u, v) for u, v in got if v.shape == (dim,)]
        m = np.stack([v for _, v in got]).astype(np.float32)
        usable = np.any(m != 0, axis=1) & np.all(np.isfinite(m), axis=1)  # as usable_vector, for all rows at once
        # Each row's norm as np.linalg.norm computes one vector's (a 2-d norm sums in another order: last bits).
        norms = np.array([np.linalg.norm(v) for v in m], dtype=np.float32)
        unit = m / np.maximum(norms, np.float32(1e-12))[:, None]
        out.update((u, unit[i]) for i, (u, _) in enumerate(got) if usable[i])
    return out


def update_preferences(store: Store, user_ids: Iterable[str]) -> UpdateReport | None:
    """Recompute the statistics of ``user_ids`` (pickiness, appeal, taste, counts) from all their stored likes
    and passes and store them as one patch (see the module docstring); None when no model is stored. Users
    without a usable vector (deleted) get the cold row, so nothing of theirs stays in the served model.
    Raises ``StoreUnavailable``."""
    sm = served_model(store)
    touched = sorted({str(x) for x in user_ids})
    if sm is None or not touched:
        return None
    sh = sm.shared
    keys = ("viewer_id", "candidate_id", "decision", "ts")
    named: set[str] = set(touched)
    pages = []
    for key in ("viewer_id", "candidate_id"):
        flt = Filter(must=(MatchAny.of(key, touched),))
        try:
            rows = [p.payload for p in store.scroll_payload(FEEDBACK, keys, flt, with_ids=False)]
        except InvalidInput:  # no feedback collection
            rows = []
        pages.append(rows)
        named.update(str(r.get("viewer_id")) for r in rows)
        named.update(str(r.get("candidate_id")) for r in rows)
    vecs = _vectors_of(store, sorted(named))
    order = sorted(vecs)
    index = {x: i for i, x in enumerate(order)}
    reduced = np.zeros((len(order), sm.space.shape[1]), np.float32)
    if order:
        reduced = (np.stack([vecs[x] for x in order]).astype(np.float64) @ sm.space).astype(np.float32)
    given, recv = (_pairs(rows, index) for rows in pages)
    # Rows of each user as viewer / as candidate, by one sort (a mask per user is quadratic in a big batch).
    g_order, g_bounds = _groups(given[:, 0], len(order))
    r_order, r_bounds = _groups(recv[:, 1], len(order))
    m, p0 = float(sh["prior_weight"]), float(sh["like_rate"])
    pids, uids, stats, tastes = [], [], [], []
    gone: list[str] = []
    events: set[tuple[int, int]] = set()
    for x in touched:
        row = sm.index.get(user_point_id(x), -1)
        if x not in index:  # deleted or without a vector: nothing of theirs is kept (see _scrub)
            if row >= 0:
                gone.append(user_point_id(x))
            continue
        i = index[x]
        g = given[g_order[g_bounds[i] : g_bounds[i + 1]]]
        r = recv[r_order[r_bounds[i] : r_bounds[i + 1]]]
        events.update(map(tuple, g[:, :2].tolist()))
        events.update(map(tuple, r[:, :2].tolist()))
        lk = g[:, 2].astype(bool)
        n_like, n_pass = float(lk.sum()), float((~lk).sum())
        s_like = reduced[g[lk, 1]].astype(np.float64).sum(axis=0)
        s_pass = reduced[g[~lk, 1]].astype(np.float64).sum(axis=0)
        own = s_like / max(n_like, 1.0) - s_pass / max(n_pass, 1.0)
        eff = 2 * n_like * n_pass / max(n_like + n_pass, 1.0) if n_like > 0 and n_pass > 0 else 0.0
        prior = np.asarray(sh["taste_prior"], np.float64)
        taste_r = shrunk_taste(own[None, :], np.array([eff]), prior, float(sh["taste_shrink"]))[0]
        old = sm.side(np.array([row]))
        side = {
            "pickiness": like_logit(np.array([n_like]), np.array([g.shape[0]]), p0, m)[0],
            "appeal": like_logit(np.array([r[:, 2].sum()]), np.array([r.shape[0]]), p0, m)[0],
            "taste": taste_r @ sm.basis,
            "vproj": reduced[i].astype(np.float64) @ sm.basis,
            "viewer_f": old["viewer_f"][0] if row >= 0 else np.zeros(sm.layout.factors),
            "item_f": old["item_f"][0] if row >= 0 else np.zeros(sm.layout.factors),
            "n": [g.shape[0], r.shape[0], int(r[:, 2].sum())],
            "twin_f": old["twin_f"][0] if row >= 0 else sm.cold[sm.layout.slices()["twin_f"]],
        }
        pids.append(user_point_id(x))
        uids.append(x)
        stats.append(stats_row(sm.layout, side))
        tastes.append(taste_r.astype(np.float32))
    if not pids and not gone:
        return UpdateReport(0, 0, sm.gen)
    erasures = sm.erasures
    if gone:  # every copy of the model loaded before must be reloaded without their rows
        _scrub(store, sm, gone)
        erasures += 1
    gen = sm.gen + 1
    if pids:
        block = block_payload(pids, uids, np.stack(stats), np.stack(tastes))
    else:
        block = block_payload([], [], np.zeros((0, sm.layout.width)), np.zeros((0, sm.space.shape[1]), np.float32))
    write_blocks(store, [(patch_point_id(sm.model_id, gen), block)])
    write_version(store, sm.model_id, gen, erasures)
    log.info("preference model: %d users updated from %d decisions (generation %d)", len(pids), len(events), gen)
    return UpdateReport(len(pids) + len(gone), len(events), gen)


def _scrub(store: Store, sm: Any, pids: list[str]) -> None:
    """Blank the rows of ``pids`` (deleted users) in every stored block that holds them (the chunk of the
    last rebuild and earlier patches), so an erasure leaves no statistics of theirs in the model's blocks."""
    from engine.learned.served import BLOCK_KEY, decode

    gone = set(pids)
    ids = [chunk_point_id(sm.model_id, i) for i in range(int(sm.shared.get("chunks", 0)))]
    ids += [patch_point_id(sm.model_id, g) for g in range(1, sm.gen + 1)]
    for s in range(0, len(ids), 4):
        for p in store.retrieve(META, ids[s : s + 4]):
            b = (p.payload or {}).get(BLOCK_KEY)
            if not isinstance(b, dict) or not gone.intersection(b["point_ids"]):
                continue
            keep = [j for j, x in enumerate(b["point_ids"]) if x not in gone]
            stats, taste = decode(b["stats"]), decode(b["taste"])
            nb = block_payload(
                [b["point_ids"][j] for j in keep], [b["user_ids"][j] for j in keep], stats[keep], taste[keep]
            )
            write_blocks(store, [(p.id, nb)])


def _groups(col: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, bounds): the rows with ``col == i`` are ``order[bounds[i]:bounds[i + 1]]``, for i < n."""
    order = np.argsort(col, kind="stable")
    return order, np.searchsorted(col[order], np.arange(n + 1))


def _pairs(rows: list[dict[str, Any]], index: dict[str, int]) -> np.ndarray:
    """(m, 3) int64 ``[viewer, candidate, like]`` of the likes and passes between users of ``index``."""
    out = [
        (index[str(r.get("viewer_id"))], index[str(r.get("candidate_id"))], int(r.get("decision") == "like"))
        for r in rows
        if r.get("decision") in ("like", "pass")
        and str(r.get("viewer_id")) in index
        and str(r.get("candidate_id")) in index
    ]
    return np.asarray(out, np.int64).reshape(-1, 3)


__all__ = [
    "MODEL_POINT_ID",
    "RebuildReport",
    "UpdateReport",
    "load_model_global",
    "rebuild_preferences",
    "update_preferences",
    "write_model",
]
