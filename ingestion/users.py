"""The users stage of the ingestion job: each metadata user's point made to match its stored photos.

A user point's vector is the normalised mean of *all* the user's stored photo vectors (not only this run's),
its payload the profile and ``photo_ids`` (``engine.schema.user_payload``); keys other parts keep there (the
like history) survive a rewrite. A user left with no stored photo loses their point and gets a record in
META with this run's reasons, so ``recommend`` can say why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.reciprocity.full import departures
from engine.reciprocity.stats import Departed
from engine.schema import (
    META,
    NO_PHOTOS_KIND,
    PHOTOS,
    STAT_FIELDS,
    USER_FIELDS,
    USER_ID,
    USERS,
    no_photos_point_id,
    user_payload,
    user_point_id,
)
from engine.settings import Settings
from engine.store.base import Point, Store
from engine.store.meta import META_VECTOR
from ingestion.records import UserRecord
from ingestion.report import IngestReport
from ingestion.store_calls import Retry

log = logging.getLogger(__name__)

# User ids per store call when reading users' points (keeps each request and filter small).
USERS_PER_CALL = 256


@dataclass
class UserState:
    """What the store holds for one user's photos: sha256 -> (point id, payload)."""

    stored: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    kept: set[str] = field(default_factory=set)  # hashes accepted in this run (stored, skipped or updated)
    first_path: dict[str, str] = field(default_factory=dict)  # sha256 -> first rel_path with it in this run


class UserPoints:
    """Writes users' points (and META's no-photo records) for one run, through the job's ``retry``."""

    def __init__(self, store: Store, retry: Retry, settings: Settings, encoder_id: str, report: IngestReport) -> None:
        self.store, self.retry, self.settings, self.encoder_id, self.report = store, retry, settings, encoder_id, report
        self.existing: dict[str, dict[str, Any]] = {}  # user point id -> stored payload

    def write(self, users: dict[str, UserState], records: dict[str, UserRecord]) -> tuple[list[str], list[Departed]]:
        """Make each metadata user's point match the store: the normalised mean of *all* its stored
        photo vectors, ``photo_ids`` naming them. Users already right are left alone (a re-run writes none).

        Returns the users rewritten and the stored state of those rewritten or deleted as it was before
        (for the incremental reciprocity refresh)."""
        c = self.report.counts
        uids = sorted(users)
        existing = self.existing
        for i in range(0, len(uids), USERS_PER_CALL):
            ids = [user_point_id(u) for u in uids[i : i + USERS_PER_CALL]]
            for p in self.retry("retrieve users", self.store.retrieve, USERS, ids):
                existing[p.id] = p.payload

        stale: list[str] = []
        to_delete: list[str] = []
        deleted_uids: list[str] = []
        for uid in uids:
            state, record = users[uid], records[uid]
            photo_ids = sorted(pid for pid, _ in state.stored.values())
            upid = user_point_id(uid)
            if not photo_ids:
                self.report.users_without_photos.append(uid)
                if upid in existing:
                    to_delete.append(upid)
                    deleted_uids.append(uid)
                continue
            want = self._user_payload(record, photo_ids)
            have = existing.get(upid)
            if have is None or {k: have.get(k) for k in USER_FIELDS} != want:
                stale.append(uid)
        c.users_without_photos = len(self.report.users_without_photos)
        # As they are before this run changes them: what other users' statistics were computed with.
        before = [uid for uid in stale if user_point_id(uid) in existing] + deleted_uids
        departed = self.retry("retrieve users", departures, self.store, before)

        size = self.settings.ingest.write_batch_size
        batch_uids: list[str] = []
        batch_photos = 0
        for uid in stale:
            batch_uids.append(uid)
            batch_photos += len(users[uid].stored)
            if batch_photos >= size:
                self._write_batch(batch_uids, users, records)
                batch_uids, batch_photos = [], 0
        self._write_batch(batch_uids, users, records)
        for i in range(0, len(to_delete), size):
            chunk = to_delete[i : i + size]
            self.retry("delete users", self.store.delete, USERS, chunk)
            c.users_deleted += len(chunk)
        return stale, departed

    def record_without_photos(self, uids: list[str]) -> None:
        """A record in META for each metadata user with no stored photo (with this run's reasons), removed
        once the user has one: ``recommend`` then says "all photos rejected", not "not in the store"."""
        without = set(self.report.users_without_photos)
        reasons: dict[str, set[str]] = {}
        for r in self.report.rejected:
            if r.kind == "photo" and r.user_id in without:
                reasons.setdefault(r.user_id, set()).add(r.reason.value)
        have: set[str] = set()
        for i in range(0, len(uids), USERS_PER_CALL):
            ids = [no_photos_point_id(u) for u in uids[i : i + USERS_PER_CALL]]
            have.update(p.id for p in self.retry("retrieve meta", self.store.retrieve, META, ids))
        points = [
            Point(
                id=no_photos_point_id(uid),
                vector=META_VECTOR,
                payload={"kind": NO_PHOTOS_KIND, USER_ID: uid, "reasons": sorted(reasons.get(uid, ()))},
            )
            for uid in sorted(without)
        ]
        gone = sorted(no_photos_point_id(u) for u in uids if u not in without and no_photos_point_id(u) in have)
        size = self.settings.ingest.write_batch_size
        for i in range(0, len(points), size):
            self.retry("upsert meta", self.store.upsert, META, points[i : i + size])
        for i in range(0, len(gone), size):
            self.retry("delete meta", self.store.delete, META, gone[i : i + size])

    def _user_payload(self, record: UserRecord, photo_ids: list[str]) -> dict[str, Any]:
        return dict(user_payload(record, photo_ids, self.encoder_id))

    def _write_batch(self, uids: list[str], users: dict[str, UserState], records: dict[str, UserRecord]) -> None:
        if not uids:
            return
        wanted = [pid for uid in uids for pid, _ in users[uid].stored.values()]
        got = self.retry("retrieve photos", self.store.retrieve, PHOTOS, wanted, with_vectors=True)
        by_user: dict[str, list[Point]] = {}
        for p in got:
            if p.vector is not None:
                by_user.setdefault(str(p.payload.get(USER_ID)), []).append(p)
        points: list[Point] = []
        for uid in uids:
            # Sorted by id: the float sum, hence the vector, is the same on every run.
            photos = sorted(by_user.get(uid, []), key=lambda p: p.id)
            if not photos:
                continue
            mean = np.mean(np.stack([np.asarray(p.vector, dtype=np.float32) for p in photos]), axis=0)
            norm = float(np.linalg.norm(mean))
            if norm == 0.0:
                log.warning("user %s: photo vectors cancel out; no user vector written", uid)
                continue
            # Keep what other parts keep in the user's point (the like history). The reciprocity statistics
            # are dropped: if the run stops before its refresh, the next one finds this user without them
            # and handles them as new.
            have = self.existing.get(user_point_id(uid), {})
            kept = {k: v for k, v in have.items() if k not in USER_FIELDS and k not in STAT_FIELDS}
            payload = {**kept, **self._user_payload(records[uid], [p.id for p in photos])}
            points.append(Point(id=user_point_id(uid), vector=(mean / norm).astype(np.float32), payload=payload))
        if points:
            self.retry("upsert users", self.store.upsert, USERS, points)
            self.report.counts.users_written += len(points)
