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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import overload

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


class RowUserIds(Sequence[str]):
    """The user id of each candidate by its model row (``rows`` (n,) int64; -1: not in the model, the id then
    from ``others``, by position, else ``""``), each looked up when read: without a ledger stage 2 reads only
    the ~k it returns of stage 1's 600, and the list of all 600 cost ~0.2 ms a call (an incref per user-id
    string, scattered in memory). Iterating builds that list once (the ledger's counts read every id)."""

    def __init__(self, sm: ServedModel, rows: np.ndarray, others: dict[int, str] | None = None) -> None:
        self._sm = sm
        self._rows = np.asarray(rows, np.int64)
        self._others = others or {}
        self._all: list[str] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return self.tolist()[i]
        r = int(self._rows[i])
        if r >= 0:
            return self._sm.user_ids[r]
        return self._others.get(int(i) % len(self._rows), "")

    def __iter__(self) -> Iterator[str]:
        return iter(self.tolist())

    def tolist(self) -> list[str]:
        """Every candidate's user id, in order (built once)."""
        if self._all is None:
            out = user_ids_of_rows(self._sm, self._rows)
            for i, u in self._others.items():
                out[i] = u
            self._all = out
        return self._all


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


__all__ = ["LIKED", "NONE", "PASSED", "RowUserIds", "bare", "decided", "model_rows", "point_ids", "user_ids_of_rows"]
