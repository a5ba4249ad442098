"""Logged decisions as data: likes, passes, blocks and reports, one point per (viewer, candidate) pair.

Kept in a collection of its own, ``feedback`` (``engine.schema.FEEDBACK``), created by ``Store.setup`` on
every backend next to ``photos`` and ``users``. Its points carry a 1-d placeholder vector (the collection
is only ever filtered, never searched) and the payload::

    {"viewer_id": str, "candidate_id": str, "decision": "like" | "pass" | "block" | "report", "ts": float}

* **Idempotent.** The point id is a uuid5 of the ordered pair, so the same event recorded twice is stored
  once; of two decisions on one pair the later ``ts`` wins (an older one arriving late changes nothing).
* **Blocks and reports are for good.** Once stored, no later like or pass replaces them, and they exclude the
  pair *both ways* from ``recommend()`` (:func:`blocked_with`).
* **Erasure.** :func:`delete_feedback_of` removes every event a user gave or received; ``delete_user`` calls it.
* **Columns.** Every write keeps a compact copy of the log in ``matcher_meta`` up to date
  (``engine.feedback_blocks``), which the full model rebuild reads instead of every point's payload.

Bad input (an unknown decision, an empty or self-referencing pair, a non-finite time) raises ``InvalidInput``
naming the row, before anything is written: a batch is validated whole, so nothing stored is lost.
"""

from __future__ import annotations

import csv
import logging
import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine import feedback_blocks
from engine.errors import InvalidInput, UserNotFound
from engine.filters import Filter, MatchAny
from engine.schema import FEEDBACK, USER_ID, USERS, user_point_id
from engine.store.base import Point, Store

log = logging.getLogger(__name__)

LIKE, PASS, BLOCK, REPORT = "like", "pass", "block", "report"
DECISIONS: tuple[str, ...] = (LIKE, PASS, BLOCK, REPORT)
EXCLUDING: frozenset[str] = frozenset({BLOCK, REPORT})  # for good, both ways
# Accepted spellings in logs (case-insensitive) -> the stored decision.
DECISION_ALIASES: dict[str, str] = {
    "like": LIKE, "yes": LIKE, "right": LIKE, "1": LIKE,
    "pass": PASS, "no": PASS, "left": PASS, "dislike": PASS, "0": PASS,
    "block": BLOCK, "report": REPORT,
}  # fmt: skip
CSV_COLUMNS: tuple[str, ...] = ("viewer_id", "candidate_id", "decision", "ts")
_NAMESPACE = uuid.UUID("0c8e7f3a-51d2-4b7e-9a61-3f2d8c4e1b57")
_PLACEHOLDER = np.ones(1, dtype=np.float32)  # the collection's only vector (it is never searched)


@dataclass(frozen=True)
class Event:
    """One logged decision: ``viewer_id`` saw ``candidate_id`` and decided; ``ts`` in seconds (any epoch)."""

    viewer_id: str
    candidate_id: str
    decision: str
    ts: float = 0.0


@dataclass(frozen=True)
class FeedbackReport:
    """What :func:`record_feedback` did: events received, pairs stored for the first time, pairs whose
    decision changed, and events that changed nothing (repeats, older than the stored one, after a block)."""

    received: int
    added: int
    updated: int
    unchanged: int
    touched_users: frozenset[str]


def feedback_point_id(viewer_id: str, candidate_id: str) -> str:
    """The id of the pair's point in ``feedback``: uuid5 of the ordered pair (so a repeat is the same point)."""
    return str(uuid.uuid5(_NAMESPACE, f"{viewer_id}\x1f{candidate_id}"))


def parse_event(viewer_id: Any, candidate_id: Any, decision: Any, ts: Any, *, where: str) -> Event:
    """A checked ``Event`` from raw fields; raises ``InvalidInput`` naming ``where`` and the field."""
    v, c = str(viewer_id or "").strip(), str(candidate_id or "").strip()
    if not v:
        raise InvalidInput(f"{where}: viewer_id is empty")
    if not c:
        raise InvalidInput(f"{where}: candidate_id is empty")
    if v == c:
        raise InvalidInput(f"{where}: user {v!r} cannot decide about themselves")
    d = DECISION_ALIASES.get(str(decision or "").strip().lower())
    if d is None:
        raise InvalidInput(f"{where}: decision {decision!r} is not one of {', '.join(DECISIONS)}")
    if ts is None or (isinstance(ts, str) and not ts.strip()):
        t = 0.0
    else:
        try:
            t = float(ts)
        except (TypeError, ValueError):
            raise InvalidInput(f"{where}: ts {ts!r} is not a number (seconds)") from None
        if not math.isfinite(t):
            raise InvalidInput(f"{where}: ts {ts!r} is not finite")
    return Event(v, c, d, t)


def read_feedback_csv(path: Path) -> list[Event]:
    """Every row of a ``viewer_id,candidate_id,decision,ts`` CSV (header required; ``ts`` may be empty).

    Raises ``InvalidInput`` naming the file and line of the first bad row, or a missing column.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{path}: not found")
    events: list[Event] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in CSV_COLUMNS[:3] if c not in (reader.fieldnames or [])]
        if missing:
            raise InvalidInput(f"{path}: missing column(s) {', '.join(missing)} (need {', '.join(CSV_COLUMNS)})")
        for line, row in enumerate(reader, start=2):
            events.append(
                parse_event(
                    row.get("viewer_id"),
                    row.get("candidate_id"),
                    row.get("decision"),
                    row.get("ts"),
                    where=f"{path}:{line}",
                )
            )
    return events


def _wins(new: Event, old: dict[str, Any] | None) -> bool:
    """Whether ``new`` replaces the stored decision ``old`` (a payload): blocks stay; the later time wins."""
    if old is None:
        return True
    if old.get("decision") in EXCLUDING:
        return False
    if new.decision in EXCLUDING:
        return True
    return new.ts > float(old.get("ts") or 0.0) or (
        new.ts == float(old.get("ts") or 0.0) and new.decision != old.get("decision")
    )


def _payload(e: Event) -> dict[str, Any]:
    return {"viewer_id": e.viewer_id, "candidate_id": e.candidate_id, "decision": e.decision, "ts": e.ts}


def record_feedback(
    store: Store,
    events: Iterable[Event],
    *,
    require_known: bool = True,
    batch_size: int = 1024,
    update_model: bool = True,
) -> FeedbackReport:
    """Store ``events`` (idempotent; see the module docstring) and return what changed.

    ``update_model``: when a learned model is stored, the users whose decisions changed get their statistics
    recomputed at once (``engine.learned.rebuild.update_preferences``: pickiness, appeal, taste, counts; weights and
    factors wait for the next full rebuild).
    ``require_known``: every user named must have a point in ``users`` (else ``UserNotFound`` for the first
    unknown one, and nothing is written). Within the batch, events on one pair are reduced as the store
    would reduce them one by one. Raises ``InvalidInput`` if the store has no ``feedback`` collection.
    """
    batch = list(events)
    for i, e in enumerate(batch):
        if not isinstance(e, Event):
            raise InvalidInput(f"events[{i}]: not an Event")
        parse_event(e.viewer_id, e.candidate_id, e.decision, e.ts, where=f"events[{i}]")  # raises if bad
    if require_known and batch:
        ids = sorted({u for e in batch for u in (e.viewer_id, e.candidate_id)})
        found = {str((p.payload or {}).get(USER_ID)) for p in store.retrieve(USERS, [user_point_id(u) for u in ids])}
        unknown = [u for u in ids if u not in found]
        if unknown:
            raise UserNotFound(unknown[0])
    # Reduce the batch per pair first, as repeated recording would.
    pending: dict[str, Event] = {}
    for e in batch:
        pid = feedback_point_id(e.viewer_id, e.candidate_id)
        prev = pending.get(pid)
        if prev is None or _wins(e, _payload(prev)):
            pending[pid] = e
    added = updated = 0
    touched: set[str] = set()
    pids = list(pending)
    writes_before, own_writes = store.write_count(FEEDBACK), 0
    columns: feedback_blocks.Version | None = None  # the log's columns in META, kept up with every write
    written: tuple[list[str], list[dict[str, Any]]] = ([], [])
    for start in range(0, len(pids), batch_size):
        chunk = pids[start : start + batch_size]
        stored = {p.id: p.payload for p in store.retrieve(FEEDBACK, chunk)}
        write: list[Point] = []
        for pid in chunk:
            e, old = pending[pid], stored.get(pid)
            if not _wins(e, old):
                continue
            if old is None:
                added += 1
            else:
                updated += 1
            write.append(Point(id=pid, vector=_PLACEHOLDER, payload=_payload(e)))
            touched.update((e.viewer_id, e.candidate_id))
        if write:
            if not own_writes:
                columns = feedback_blocks.begin_write(store)
            store.upsert(FEEDBACK, write)
            own_writes += 1
            written[0].extend(p.id for p in write)
            written[1].extend(p.payload for p in write)
    if columns is not None:
        feedback_blocks.end_write(store, columns, written[0], written[1], added)
    unchanged = len(batch) - added - updated
    if touched:  # engine.ranking.feedback_cache reads this module: imported late
        from engine.ranking.feedback_cache import forget_users

        forget_users(store, touched, writes_before, own_writes)
    if update_model and touched:
        from engine.learned.rebuild import update_preferences  # engine.learned.rebuild reads feedback: imported late

        update_preferences(store, touched)
    log.info("feedback: %d events, %d new pairs, %d updated, %d unchanged", len(batch), added, updated, unchanged)
    return FeedbackReport(len(batch), added, updated, unchanged, frozenset(touched))


def _events(store: Store, flt: Filter | None) -> list[Event]:
    out = []
    for p in store.scroll(FEEDBACK, flt, batch_size=4096):
        pl = p.payload or {}
        out.append(Event(str(pl["viewer_id"]), str(pl["candidate_id"]), str(pl["decision"]), float(pl.get("ts") or 0)))
    return out


def decisions_of(store: Store, viewer_id: str) -> dict[str, str]:
    """``candidate_id -> decision`` for every pair ``viewer_id`` decided on."""
    return {e.candidate_id: e.decision for e in _events(store, Filter(must=(MatchAny.of("viewer_id", [viewer_id]),)))}


def decisions_about(store: Store, candidate_id: str) -> dict[str, str]:
    """``viewer_id -> decision`` for every viewer who decided on ``candidate_id``."""
    return {
        e.viewer_id: e.decision for e in _events(store, Filter(must=(MatchAny.of("candidate_id", [candidate_id]),)))
    }


def blocked_with(store: Store, user_id: str) -> set[str]:
    """Users ``user_id`` blocked or reported, and users who blocked or reported ``user_id``: never shown
    to each other again."""
    out = {c for c, d in decisions_of(store, user_id).items() if d in EXCLUDING}
    out |= {v for v, d in decisions_about(store, user_id).items() if d in EXCLUDING}
    return out


def all_events(store: Store) -> list[Event]:
    """Every stored event (one per pair), in no particular order."""
    return _events(store, None)


_LOG_KEYS: tuple[str, ...] = ("viewer_id", "candidate_id", "decision", "ts")


def decision_arrays(
    store: Store, index: dict[str, int], flt: Filter | None = None, *, progress: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every stored like and pass (matching ``flt``) between users of ``index`` as arrays, read in bulk:
    ``(viewer, candidate)`` int64 indices into ``index``, ``like`` bool, ``ts`` float64 seconds, (m,) each.
    Blocks, reports and events naming a user outside ``index`` (deleted, or without a vector) are left out.
    No ``Event`` per point: only the four payload keys cross from the store (``Store.scroll_payload``).
    ``progress``: an object with ``update(n)`` (a tqdm bar), called per page. A store without the feedback
    collection has no decisions. Raises ``StoreUnavailable``."""
    from array import array

    viewer, cand, ts = array("q"), array("q"), array("d")
    like = bytearray()
    get = index.get
    page = 0
    try:
        for p in store.scroll_payload(FEEDBACK, _LOG_KEYS, flt, with_ids=False, batch_size=8192):
            page += 1
            if progress is not None and page == 8192:
                progress.update(page)
                page = 0
            pl = p.payload
            d = pl.get("decision")
            if d != LIKE and d != PASS:
                continue
            a, b = get(pl.get("viewer_id")), get(pl.get("candidate_id"))  # type: ignore[arg-type]
            if a is None or b is None:
                continue
            viewer.append(a)
            cand.append(b)
            like.append(d == LIKE)
            ts.append(float(pl.get("ts") or 0.0))
    except InvalidInput:  # no feedback collection (a store set up before it existed)
        pass
    if progress is not None and page:
        progress.update(page)
    return (
        np.frombuffer(viewer, np.int64).copy() if len(viewer) else np.zeros(0, np.int64),
        np.frombuffer(cand, np.int64).copy() if len(cand) else np.zeros(0, np.int64),
        np.frombuffer(bytes(like), np.uint8).astype(bool),
        np.frombuffer(ts, np.float64).copy() if len(ts) else np.zeros(0, np.float64),
    )


def around(store: Store, user_id: str) -> tuple[dict[str, str], set[str]]:
    """What ``recommend()`` needs of ``user_id``'s feedback, in one pass: ``viewer_id -> decision`` of every
    viewer who decided on them, and the users blocked or reported either way (never shown to each other).
    Two filtered scrolls (decisions about the user; the user's own blocks and reports only), no ``count``;
    a store without the feedback collection has none."""
    try:
        about: dict[str, str] = {}
        flt = Filter(must=(MatchAny.of("candidate_id", [user_id]),))
        for p in store.scroll_payload(FEEDBACK, ("viewer_id", "decision"), flt, with_ids=False, batch_size=4096):
            about[str(p.payload["viewer_id"])] = str(p.payload["decision"])
        mine = Filter(must=(MatchAny.of("viewer_id", [user_id]), MatchAny.of("decision", sorted(EXCLUDING))))
        blocked = {
            str(p.payload["candidate_id"])
            for p in store.scroll_payload(FEEDBACK, ("candidate_id",), mine, with_ids=False, batch_size=4096)
        }
    except InvalidInput:  # no feedback collection
        return {}, set()
    blocked |= {v for v, d in about.items() if d in EXCLUDING}
    return about, blocked


def has_feedback_collection(store: Store) -> bool:
    """Whether ``store`` has the ``feedback`` collection (stores set up before it existed do not)."""
    try:
        store.count(FEEDBACK)
    except InvalidInput:
        return False
    return True


def delete_feedback_of(store: Store, user_id: str) -> int:
    """Remove every event ``user_id`` gave or received; returns how many were removed (0 without any)."""
    removed = 0
    others: set[str] = set()
    if has_feedback_collection(store):
        # The log's columns: dropped before the events go (a kill below leaves no block holding the user),
        # then written again without them; a copy that does not name the user stays as it is.
        rows = feedback_blocks.stored_rows(store)
        names = rows is None or user_id in rows.users
        if names and feedback_blocks.read_version(store) is not None:
            feedback_blocks.drop(store)
        removed = _delete_events_of(store, user_id, others)
        if rows is not None and names:
            feedback_blocks.write_set(store, rows.without(user_id))
    # The learned model: their row goes (it holds their own vector's coordinates even without any decision),
    # and the users they decided with are recomputed without them.
    from engine.learned.rebuild import update_preferences  # engine.learned.rebuild reads feedback: imported late

    update_preferences(store, [user_id, *sorted(others)])
    return removed


def _delete_events_of(store: Store, user_id: str, others: set[str]) -> int:
    removed = 0
    for key in ("viewer_id", "candidate_id"):
        flt = Filter(must=(MatchAny.of(key, [user_id]),))
        n = store.count(FEEDBACK, flt)
        if n:
            other = "candidate_id" if key == "viewer_id" else "viewer_id"
            others.update(str(p.payload.get(other)) for p in store.scroll_payload(FEEDBACK, (other,), flt))
            store.delete_by_filter(FEEDBACK, flt)
        removed += n
    return removed


def events_to_arrays(events: Sequence[Event], index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(viewer, candidate, decision_code)`` int arrays for the events whose both users are in ``index``
    (``decision_code`` is the position in ``DECISIONS``); others (deleted users) are dropped."""
    code = {d: i for i, d in enumerate(DECISIONS)}
    rows = [(index[e.viewer_id], index[e.candidate_id], code[e.decision]) for e in events
            if e.viewer_id in index and e.candidate_id in index]  # fmt: skip
    if not rows:
        z = np.zeros(0, dtype=np.int64)
        return z, z.copy(), z.copy()
    a = np.asarray(rows, dtype=np.int64)
    return a[:, 0].copy(), a[:, 1].copy(), a[:, 2].copy()


__all__ = [
    "BLOCK", "DECISIONS", "EXCLUDING", "LIKE", "PASS", "REPORT", "Event", "FeedbackReport",
    "all_events", "around", "blocked_with", "decision_arrays", "decisions_about", "decisions_of", "delete_feedback_of",
    "feedback_point_id", "has_feedback_collection", "parse_event", "read_feedback_csv", "record_feedback",
]  # fmt: skip
