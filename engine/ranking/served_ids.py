"""Stage 2's per-candidate lookups without a Python step per candidate: the candidates' model rows
(:func:`model_rows`, ``map`` over C callables), and per-process arrays of a served model's user ids
(``engine.learned.served.ServedModel``), so that the learned ``recommend()`` maps its few hundred candidates'
rows to user ids, and the asker's logged replies to those rows, with numpy gathers.

Kept per served-model object (a reload makes a new object) and remade when its row count or generation
moves (an incremental update appends users; rows are never reordered within one object, and a row's user id
never changes: the point id is a hash of the user id).
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from operator import attrgetter

import numpy as np

from engine.feedback import LIKE, PASS
from engine.learned.served import ServedModel
from engine.store.base import ScoredPoint

log = logging.getLogger(__name__)

NONE, LIKED, PASSED = 0, 1, 2  # codes of ``decided``


_ID = attrgetter("id")


def point_ids(cands: list[ScoredPoint]) -> list[str]:
    """The candidates' point ids, in order."""
    return list(map(_ID, cands))


def model_rows(sm: ServedModel, cands: list[ScoredPoint]) -> np.ndarray:
    """``sm.rows`` of the candidates' point ids, (n,) int64 (-1: not in the model)."""
    return sm.rows(point_ids(cands))


def bare(cands: list[ScoredPoint], what: str) -> bool:
    """Whether no candidate carries a ``what`` (``"payload"`` or ``"vector"``), as stage 1 on the learned path
    returns them."""
    return list(map(attrgetter(what), cands)).count(None) == len(cands)


@dataclass
class _Ids:
    model: weakref.ref[ServedModel]
    key: tuple[int, int]  # (rows, generation) of the model when made
    user_ids: np.ndarray  # (N,) object: the user id of each row
    rows: dict[str, int]  # user id -> row


_IDS: dict[int, _Ids] = {}  # by id() of the served model (its dataclass is not hashable)
_LOCK = threading.Lock()


def _ids(sm: ServedModel) -> _Ids:
    key = (len(sm.user_ids), sm.gen)
    with _LOCK:
        have = _IDS.get(id(sm))
        if have is not None and have.model() is sm and have.key == key:
            return have
    arr = np.empty(len(sm.user_ids), dtype=object)
    arr[:] = sm.user_ids
    made = _Ids(weakref.ref(sm), key, arr, {u: i for i, u in enumerate(sm.user_ids)})
    with _LOCK:
        for k in [k for k, v in _IDS.items() if v.model() is None]:  # models no longer served
            del _IDS[k]
        _IDS[id(sm)] = made
    return made


def user_ids_of_rows(sm: ServedModel, rows: np.ndarray) -> list[str]:
    """``[sm.user_ids[r] for r in rows]``, ``""`` where ``rows`` (n,) holds -1 (a user not in the model)."""
    rows = np.asarray(rows, np.int64)
    if len(sm.user_ids) == 0:
        return [""] * len(rows)
    out = _ids(sm).user_ids[np.maximum(rows, 0)]
    out[rows < 0] = ""
    return list(out.tolist())


def decided(sm: ServedModel, rows: np.ndarray, about: dict[str, str]) -> np.ndarray:
    """(n,) int8: what the user of each model row in ``rows`` decided about the asker, from ``about``
    (``viewer user id -> decision``, ``engine.feedback.around``): ``LIKED``, ``PASSED`` or ``NONE`` (no logged
    like or pass; also for -1 rows, which the caller looks up by user id)."""
    rows = np.asarray(rows, np.int64)
    out = np.zeros(len(rows), np.int8)
    if not about or len(sm.user_ids) == 0:
        return out
    index = _ids(sm).rows
    mark = np.zeros(len(sm.user_ids), np.int8)
    for u, d in about.items():
        r = index.get(u)
        if r is not None and d in (LIKE, PASS):
            mark[r] = LIKED if d == LIKE else PASSED
    inside = rows >= 0
    out[inside] = mark[rows[inside]]
    return out


__all__ = ["LIKED", "NONE", "PASSED", "bare", "decided", "model_rows", "point_ids", "user_ids_of_rows"]
