"""The learned preference model (``engine.preference``) in the store: the full rebuild, and what serving reads.

Where it lives:

* each user's point in ``users`` gets ``pref`` (pickiness, appeal, taste coordinates, own-vector
  coordinates, viewer and candidate factors, decision counts: ~70 floats, see ``SideStats``) and
  ``pref_taste`` (the taste in embedding space, the asker's stage-1 query direction; read for the asker only);
* the shared part (feature standardisation, weights, the cold-start statistics) is one more point of the
  ``matcher_meta`` collection, ``MODEL_POINT_ID``. A store without it serves the photo-only engine.

``rebuild_preferences`` is the batch job (``matcher rebuild-model``): one scroll of ``users`` with vectors,
one of ``feedback``, the fit in numpy, then partial payload writes (``Store.set_payload``: on Edge the
points keep their HNSW index). Blocks and reports are not preferences and stay out of the fit (they
exclude for good in ``recommend()``); likes and passes of users deleted since are dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from engine.errors import InvalidInput
from engine.feedback import LIKE, PASS, all_events, has_feedback_collection
from engine.preference import PreferenceConfig, PreferenceModel, fit_preference
from engine.schema import META, USER_ID, USERS, usable_vector
from engine.settings import Settings
from engine.store.base import Point, Store

log = logging.getLogger(__name__)

PREF_FIELD = "pref"
PREF_TASTE_FIELD = "pref_taste"
MODEL_POINT_ID = "00000000-0000-4000-8000-00000000a1a2"
MODEL_KEY = "preference_model"


@dataclass(frozen=True)
class RebuildReport:
    users: int
    events: int  # likes and passes the model was fitted on
    seconds: dict[str, float]
    weights: dict[str, float]


def _config(settings: Settings) -> PreferenceConfig:
    p = settings.preference
    return PreferenceConfig(
        prior_weight=p.prior_weight, taste_shrink=p.taste_shrink, rank=p.rank, factors=p.factors,
        als_iterations=p.als_iterations, als_ridge=p.als_ridge, holdout=p.holdout, l2=p.l2, seed=p.seed,
    )  # fmt: skip


def rebuild_preferences(store: Store, settings: Settings, *, batch_size: int = 512) -> RebuildReport:
    """Fit the preference model on every stored like and pass and write it into the store (full rebuild).

    Users without a usable vector are left out (they cannot be recommended). Raises ``StoreUnavailable``.
    """
    seconds: dict[str, float] = {}
    stages = tqdm(total=3, desc="model rebuild", unit="stage", disable=not settings.progress)
    stages.set_postfix_str("reading users and feedback")
    t = time.perf_counter()
    ids: list[str] = []
    pids: list[str] = []
    vecs: list[np.ndarray] = []
    for p in store.scroll(USERS, with_vectors=True, batch_size=2048):
        v = usable_vector(p)
        if v is None:
            continue
        ids.append(str((p.payload or {}).get(USER_ID)))
        pids.append(p.id)
        vecs.append(v)
    n = len(ids)
    if n == 0:
        stages.close()
        return RebuildReport(0, 0, {"read_s": time.perf_counter() - t}, {})
    vectors = np.stack(vecs).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    index = {u: i for i, u in enumerate(ids)}
    events = all_events(store) if has_feedback_collection(store) else []
    rows = [
        (index[e.viewer_id], index[e.candidate_id], e.decision == LIKE, e.ts)
        for e in events
        if e.decision in (LIKE, PASS) and e.viewer_id in index and e.candidate_id in index
    ]
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    seconds["read_s"] = time.perf_counter() - t
    stages.update()
    stages.set_postfix_str(f"fitting on {arr.shape[0]} decisions")

    t = time.perf_counter()
    model = fit_preference(
        ids, vectors, arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2].astype(bool),
        config=_config(settings), ts=arr[:, 3], period_s=settings.preference.period_s,
    )  # fmt: skip
    seconds["fit_s"] = time.perf_counter() - t
    stages.update()
    stages.set_postfix_str(f"writing {n} users")

    t = time.perf_counter()
    write_model(store, model, pids, settings=settings, batch_size=batch_size)
    seconds["write_s"] = time.perf_counter() - t
    stages.update()
    stages.close()
    weights = dict(zip(("bias", *model_features()), model.weights.round(4).tolist(), strict=True))
    return RebuildReport(n, int(arr.shape[0]), seconds, weights)


def model_features() -> tuple[str, ...]:
    from engine.preference import FEATURES

    return FEATURES


def write_model(
    store: Store, model: PreferenceModel, point_ids: list[str], *, settings: Settings, batch_size: int = 512
) -> None:
    """Per-user payloads (``pref``, ``pref_taste``) for ``point_ids`` (in ``model.user_ids`` order), then
    the shared part; the shared part goes last, so a reader never sees new weights over old statistics."""
    taste = np.round(model.users.taste_full, 5)
    steps = range(0, len(point_ids), batch_size)
    bar = tqdm(steps, desc="model: writing users", unit="batch", disable=not settings.progress)
    for start in bar:
        chunk = point_ids[start : start + batch_size]
        store.set_payload(
            USERS,
            {
                pid: {PREF_FIELD: model.user_payload(start + j), PREF_TASTE_FIELD: taste[start + j].tolist()}
                for j, pid in enumerate(chunk)
            },
        )
    from engine.store.meta import META_VECTOR

    shared = model.global_payload()
    # The users the log finds most appealing (received likes, smoothed): stage 1's second, restricted query.
    top = np.argsort(-model.users.appeal, kind="stable")[: settings.preference.popular]
    shared["popular_ids"] = [point_ids[i] for i in top.tolist() if model.users.n_received[i] > 0]
    store.upsert(META, [Point(id=MODEL_POINT_ID, vector=META_VECTOR, payload={MODEL_KEY: shared})])


def load_model_global(store: Store) -> dict[str, Any] | None:
    """The shared part of the stored model, or None when no model was built (the photo-only engine)."""
    try:
        pts = store.retrieve(META, [MODEL_POINT_ID])
    except InvalidInput:  # a store without META (never set up) has no model either
        return None
    if not pts:
        return None
    g = (pts[0].payload or {}).get(MODEL_KEY)
    return g if isinstance(g, dict) and "weights" in g else None


__all__ = [
    "MODEL_POINT_ID",
    "PREF_FIELD",
    "PREF_TASTE_FIELD",
    "RebuildReport",
    "load_model_global",
    "rebuild_preferences",
    "write_model",
]
