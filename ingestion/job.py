"""The ingestion job: metadata → read → preprocess → encode → write photos → user mean vectors → refresh.

Why the writes come in this order: photo points go first and user points are always recomputed from the
photo vectors *in the store*, never from what this run happened to embed. The skip check uses the hashes in
the store too. So a run killed (or a store lost) at any point leaves a state that the same command, run again,
completes exactly: stored photos are skipped, missing ones embedded, and every user point whose photo set or
profile does not match the store is rewritten. Point ids are uuid5 of (user, photo hash), so nothing can be
written twice.

Every store call goes through tenacity: a transient ``StoreUnavailable`` is retried with bounded exponential
backoff; one that persists ends the run with a ``StoreUnavailable`` naming the step, after which everything
acknowledged stays in the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from engine.errors import InvalidInput
from engine.filters import Filter, MatchAny
from engine.reciprocity.full import refresh
from engine.reciprocity.incremental import refresh_changed
from engine.reciprocity.stats import Departed, RefreshReport
from engine.schema import (
    ENCODER_ID,
    PHOTO_FIELDS,
    PHOTO_SHA256,
    PHOTOS,
    USER_ID,
    photo_payload,
    photo_point_id,
)
from engine.settings import Settings
from engine.store.base import Point, Store
from ingestion.metadata import load_metadata
from ingestion.reader import Refused, decode_photo, read_photo
from ingestion.records import Metadata, PhotoRef, UserRecord
from ingestion.report import IngestReport, Notice, Reason, Rejection
from ingestion.store_calls import retry_store_call, timed
from ingestion.users import USERS_PER_CALL, UserPoints, UserState

log = logging.getLogger(__name__)

T = TypeVar("T")

# User ids per MatchAny filter when listing stored photos (keeps each filter small).


class Embedder(Protocol):
    """What the job needs of ``training.encoder.Encoder``."""

    encoder_id: str
    dim: int

    def embed(self, images: Sequence[Image.Image], batch_size: int = 8) -> np.ndarray: ...


def run_ingest(
    photos_dir: Path,
    metadata_csv: Path,
    *,
    settings: Settings,
    encoder: Embedder | None = None,
    store: Store | None = None,
    prune: bool = False,
    rebuild: bool = False,
    report_path: Path | None = None,
) -> IngestReport:
    """Ingest the photos of ``metadata_csv`` (paths relative to ``photos_dir``) into the store.

    ``encoder`` defaults to ``load_encoder(settings.encoder.source, ...)``; ``store`` to
    ``open_store(settings)`` (opened and closed here). ``prune`` deletes stored photos of the metadata's
    users that are not among the photos accepted in this run. ``rebuild`` drops both collections first
    (another encoder's vectors).

    Returns the report (also written to ``report_path``, even when the run fails part way). Bad input is
    recorded in the report, never raised; raises ``InvalidInput`` (metadata unusable as a whole),
    ``EncoderMismatch`` (the store holds another encoder's vectors), ``StoreUnavailable`` (store down after
    retries), ``EncoderUnavailable``.
    """
    t_start = time.perf_counter()
    report = IngestReport(
        photos_dir=str(photos_dir), metadata=str(metadata_csv), prune=prune, rebuild=rebuild
    )
    own_store = store is None
    try:
        with timed(report, "metadata"):
            photos_dir = Path(photos_dir)
            if not photos_dir.is_dir():
                raise InvalidInput(f"{photos_dir}: PHOTOS_DIR is not a folder")
            meta = load_metadata(Path(metadata_csv), photos_dir, settings)
        report.layout = meta.layout
        report.layout_reason = meta.layout_reason
        for r in meta.rejected:
            report.reject(r)
        report.counts.metadata_lines = meta.lines
        report.counts.metadata_blank_lines = meta.blank_lines
        report.counts.rows_accepted = meta.rows_accepted
        with timed(report, "setup"):
            if store is None:  # before the encoder: a locked or down store fails in seconds, not minutes
                from engine.store import open_store

                store = open_store(settings)
            report.store_backend = store.backend
            if encoder is None:
                encoder = _load_encoder(settings)
            report.encoder_id, report.dim = encoder.encoder_id, int(encoder.dim)
            job = _Job(photos_dir.resolve(strict=True), meta, settings, encoder, store, report, prune)
            job.retry("setup", store.setup, encoder.encoder_id, int(encoder.dim), rebuild=rebuild)
        job.run()
        report.completed = True
        return report
    except BaseException as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        report.finished_at = datetime.now(UTC)
        s = report.stage_seconds
        s.total = time.perf_counter() - t_start
        c = report.counts
        busy = s.total - s.setup  # loading the encoder is a fixed cost, not a rate
        report.photos_per_second = c.photos_seen / busy if busy > 0 else 0.0
        report.write_photos_per_second = (
            c.photos_stored / s.write if s.write > 0 and c.photos_stored else None
        )
        if report_path is not None:
            report.write(Path(report_path))
        if own_store and store is not None:
            store.close()


def _load_encoder(settings: Settings) -> Embedder:
    from training.encoder import load_encoder_from_settings

    encoder: Embedder = load_encoder_from_settings(settings.encoder)
    return encoder


def _scroll_all(store: Store, collection: str, flt: Filter) -> list[Point]:
    # A list, not the iterator: a retry must start the scroll over, not resume a broken one.
    return list(store.scroll(collection, flt))


@dataclass
class _Pending:
    ref: PhotoRef
    sha256: str
    image: Image.Image


class _Job:
    def __init__(
        self,
        root: Path,
        meta: Metadata,
        settings: Settings,
        encoder: Embedder,
        store: Store,
        report: IngestReport,
        prune: bool,
    ) -> None:
        self.root = root
        self.meta = meta
        self.settings = settings
        self.encoder = encoder
        self.store = store
        self.report = report
        self.prune = prune
        self.users: dict[str, UserState] = {uid: UserState() for uid in meta.users}
        self.pending: list[_Pending] = []
        self.to_write: list[Point] = []
        self.to_update: list[tuple[str, dict[str, Any]]] = []  # (photo point id, new payload)
        # Users this run rewrote or deleted, for the incremental reciprocity refresh.
        self.arrived: list[str] = []
        self.departed: list[Departed] = []

    # -- store calls ---------------------------------------------------------------------------------------
    def retry(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` under the ingestion's retry policy (``ingestion.store_calls``)."""
        return retry_store_call(self.settings.ingest, what, fn, *args, **kwargs)

    # -- the run -------------------------------------------------------------------------------------------
    def run(self) -> None:
        c = self.report.counts
        c.users_seen = len(self.meta.users)
        self._load_stored()
        bar = tqdm(
            total=len(self.meta.photos),
            unit="photo",
            desc="ingest",
            disable=not self.settings.progress,
            leave=False,
        )
        try:
            for ref in self.meta.photos:
                self._take(ref)
                bar.update(1)
            self._encode()
            self._flush_writes(force=True)
        finally:
            bar.close()
        self._apply_updates()
        self._drop_replaced()
        if self.prune:
            self._prune()
        with timed(self.report, "users"):
            users = UserPoints(self.store, self.retry, self.settings, self.encoder.encoder_id, self.report)
            self.arrived, self.departed = users.write(self.users, self.meta.users)
            users.record_without_photos(sorted(self.users))
        self._refresh()
        with timed(self.report, "optimize"):
            self.retry("optimize", self.store.optimize)
        self.report.optimized = True

    def _load_stored(self) -> None:
        """Hashes and payloads of the stored photos of every user in the metadata (no vectors)."""
        uids = sorted(self.users)
        with timed(self.report, "read"):
            for i in range(0, len(uids), USERS_PER_CALL):
                chunk = uids[i : i + USERS_PER_CALL]
                flt = Filter(must=(MatchAny.of(USER_ID, chunk),))
                points = self.retry("scroll photos", _scroll_all, self.store, PHOTOS, flt)
                for p in points:
                    uid, sha = p.payload.get(USER_ID), p.payload.get(PHOTO_SHA256)
                    if isinstance(uid, str) and isinstance(sha, str) and uid in self.users:
                        self.users[uid].stored[sha] = (p.id, dict(p.payload))

    def _photo_payload(self, user: UserRecord, sha: str, rel: str) -> dict[str, Any]:
        return dict(photo_payload(user, sha, rel, self.encoder.encoder_id))

    def _reject_photo(self, ref: PhotoRef, refused: Refused) -> None:
        self.report.reject(
            Rejection(
                kind="photo",
                reason=refused.reason,
                detail=refused.detail,
                path=ref.rel_path,
                file=self.meta.file if ref.row is not None else None,
                row=ref.row,
                user_id=ref.user_id,
            )
        )

    def _take(self, ref: PhotoRef) -> None:
        """Read one photo; skip it, queue a payload update, or decode it and queue it for the encoder."""
        c = self.report.counts
        c.photos_seen += 1
        state = self.users[ref.user_id]
        user = self.meta.users[ref.user_id]
        with timed(self.report, "read"):
            raw = read_photo(self.root, ref.rel_path, self.settings.images)
        if isinstance(raw, Refused):
            self._reject_photo(ref, raw)
            return
        first = state.first_path.get(raw.sha256)
        if first is not None:
            self._reject_photo(ref, Refused(Reason.DUPLICATE_PHOTO, f"same content as {first!r} (same user)"))
            return
        state.first_path[raw.sha256] = ref.rel_path
        want = self._photo_payload(user, raw.sha256, ref.rel_path)
        stored = state.stored.get(raw.sha256)
        if stored is not None and stored[1].get(ENCODER_ID) == self.encoder.encoder_id:
            state.kept.add(raw.sha256)
            if {k: stored[1].get(k) for k in PHOTO_FIELDS} != want:
                self.to_update.append((stored[0], want))
                c.photos_updated += 1
            else:
                c.photos_skipped += 1
            return
        with timed(self.report, "preprocess"):
            decoded = decode_photo(raw, self.settings.images)
        if isinstance(decoded, Refused):
            state.first_path.pop(raw.sha256, None)
            self._reject_photo(ref, decoded)
            return
        if decoded.note:
            self.report.notices.append(Notice(path=ref.rel_path, detail=decoded.note))
        self.pending.append(_Pending(ref, raw.sha256, decoded.image))
        if len(self.pending) >= self.settings.encoder.batch_size:
            self._encode()
            self._flush_writes(force=False)

    def _encode(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        with timed(self.report, "encode"):
            try:
                vectors = self._embed(batch)
            except InvalidInput:
                # One image the encoder cannot take must not sink its batch: redo them one by one.
                kept: list[_Pending] = []
                rows: list[np.ndarray] = []
                for p in batch:
                    try:
                        rows.append(self._embed([p]))
                        kept.append(p)
                    except InvalidInput as exc:
                        self.users[p.ref.user_id].first_path.pop(p.sha256, None)
                        refused = Refused(Reason.ENCODER_REFUSED, f"{p.ref.rel_path!r}: {exc}")
                        self._reject_photo(p.ref, refused)
                batch = kept
                vectors = np.concatenate(rows) if rows else np.zeros((0, self.encoder.dim), np.float32)
        for p, v in zip(batch, vectors, strict=True):
            user = self.meta.users[p.ref.user_id]
            pid = photo_point_id(user.user_id, p.sha256)
            self.to_write.append(
                Point(id=pid, vector=v, payload=self._photo_payload(user, p.sha256, p.ref.rel_path))
            )

    def _embed(self, batch: list[_Pending]) -> np.ndarray:
        vectors = np.asarray(
            self.encoder.embed([p.image for p in batch], batch_size=self.settings.encoder.batch_size),
            dtype=np.float32,
        )
        if vectors.shape != (len(batch), self.encoder.dim):
            raise RuntimeError(
                f"encoder returned shape {vectors.shape}, expected ({len(batch)}, {self.encoder.dim})"
            )
        return vectors

    def _flush_writes(self, *, force: bool) -> None:
        size = self.settings.ingest.write_batch_size
        while self.to_write and (force or len(self.to_write) >= size):
            chunk, self.to_write = self.to_write[:size], self.to_write[size:]
            with timed(self.report, "write"):
                self.retry("upsert photos", self.store.upsert, PHOTOS, chunk)
            # Counted only once acknowledged: the report never claims a photo the store does not hold.
            for p in chunk:
                uid, sha = p.payload[USER_ID], p.payload[PHOTO_SHA256]
                state = self.users[uid]
                state.stored[sha] = (p.id, p.payload)
                state.kept.add(sha)
            self.report.counts.photos_stored += len(chunk)
            log.info("wrote %d photos (%d this run)", len(chunk), self.report.counts.photos_stored)

    def _apply_updates(self) -> None:
        """Rewrite the payload of stored photos whose user fields or path changed (vector kept as stored)."""
        size = self.settings.ingest.write_batch_size
        for i in range(0, len(self.to_update), size):
            chunk = dict(self.to_update[i : i + size])
            with timed(self.report, "write"):
                # A photos point holds the job's keys only, so setting them all is the whole new payload.
                self.retry("update photos", self.store.set_payload, PHOTOS, chunk)
            for pid, payload in chunk.items():
                self.users[payload[USER_ID]].stored[payload[PHOTO_SHA256]] = (pid, payload)

    def _drop_replaced(self) -> None:
        """Delete the stored photo whose file was replaced in place: same user and path, other content.

        Runs after the new content's point is written (and acknowledged), so a kill in between leaves both
        and the re-run deletes the old one. A replacement that was rejected keeps the old point."""
        ids: list[str] = []
        for state in self.users.values():
            paths = {state.stored[sha][1].get("source_path") for sha in state.kept if sha in state.stored}
            for sha in sorted(set(state.stored) - state.kept):
                if state.stored[sha][1].get("source_path") in paths:
                    ids.append(state.stored.pop(sha)[0])
        self.report.counts.photos_replaced += self._delete_photos(ids)

    def _prune(self) -> None:
        """Delete stored photos of metadata users not accepted in this run (left the metadata, now bad)."""
        ids: list[str] = []
        for state in self.users.values():
            for sha in sorted(set(state.stored) - state.kept):
                ids.append(state.stored.pop(sha)[0])
        self.report.counts.photos_pruned += self._delete_photos(ids)

    def _delete_photos(self, ids: list[str]) -> int:
        """Delete these photo points in write batches; returns how many (each batch counted once acknowledged)."""
        size, done = self.settings.ingest.write_batch_size, 0
        for i in range(0, len(ids), size):
            chunk = ids[i : i + size]
            with timed(self.report, "write"):
                self.retry("delete photos", self.store.delete, PHOTOS, chunk)
            done += len(chunk)
        return done

    def _refresh(self) -> None:
        """Bring the reciprocity statistics in users' payloads up to date for what this run changed.

        The first try is incremental (``refresh_changed``); a retry after a store failure runs the full
        pass, because a half-written incremental pass cannot be replayed (its merges are not idempotent)."""
        tries = 0

        def once() -> RefreshReport:
            nonlocal tries
            tries += 1
            if tries > 1:
                return refresh(self.store, self.settings)
            return refresh_changed(self.store, self.settings, arrived=self.arrived, departed=self.departed)

        with timed(self.report, "reciprocity"):
            self.retry("refresh reciprocity", once)
        self.report.reciprocity_refreshed = True
