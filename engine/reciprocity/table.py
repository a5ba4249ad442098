"""The users table the reciprocity passes work on, and its cache beside the store (the "sidecar").

:class:`Table` holds every users point with a usable vector and profile as arrays: ids, the (n, d) matrix of
mean vectors, the compatibility attributes (genders as bits of an append-only vocabulary), like histories
(CSR), stored tastes, and the stored statistics (``kth_sim``, ``kth_k``, ``kth_top``). A full pass builds it
from one scroll of the users collection; an incremental pass (``engine.reciprocity.incremental.refresh_changed``) can
instead :func:`load` the table the previous pass saved, and re-read only the users written since.

The cache is trusted only when all of these hold (else the caller scrolls, and nothing is lost):

* META records its token (``Store.cache_token``); the store clears it before any deletion, rebuild or
  re-creation of the users collection, and removes the files (a deleted user's data must not stay on disk);
* its journal (``journal-<token>``) exists: the store appends the id of every users point *before* writing
  it, so the journal lists every user the cache may be stale for (engine/store/cache.py);
* the file reads back whole with the shapes it declares (it is written to a temporary name and renamed, and
  the token is recorded in META only after that, so a kill mid-save leaves the old token or none).

The caller also checks the users collection's point count against the table (a last guard).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InvalidInput
from engine.reciprocity.blocks import Stats
from engine.reciprocity.topk import Groups
from engine.schema import KTH_K, KTH_SIM, KTH_TOP, LIKED_IDS, TASTE, Profile, window_of
from engine.store.base import Point, Store
from engine.store.cache import journal_path, read_journal

log = logging.getLogger(__name__)

FORMAT = 2  # bump when the arrays change; an older cache is then not used (2: the stats version it matches)
_STR = "<U1"  # dtype of empty string arrays


@dataclass
class Table:
    """Users as arrays, row i = one user. Genders: ``genders[j]`` has bit ``1 << j`` (append-only, so bits
    stay valid when tables made with the same list are joined). Statistics as stored: ``kth`` NaN and
    ``kth_k`` -1 where missing; ``top`` (n, W) NaN-padded, ``top_len`` its entries (-1: not a list)."""

    ids: np.ndarray  # (n,) str, point ids
    user_ids: np.ndarray  # (n,) str
    matrix: np.ndarray  # (n, d) float32 unit
    genders: list[str]
    gender: np.ndarray  # (n,) int64
    seeks: np.ndarray  # (n,) int64
    age: np.ndarray  # (n,) int64
    lo: np.ndarray  # (n,) int64
    hi: np.ndarray  # (n,) int64
    liked_ptr: np.ndarray  # (n + 1,) int64: row i liked liked[liked_ptr[i]:liked_ptr[i + 1]]
    liked: np.ndarray  # (m,) str, user ids
    taste_row: np.ndarray  # (n,) int64: row of ``tastes`` holding user i's stored taste, -1: none
    tastes: np.ndarray  # (t, d) float32
    kth: np.ndarray  # (n,) float64
    kth_k: np.ndarray  # (n,) int64
    top: np.ndarray  # (n, W) float64
    top_len: np.ndarray  # (n,) int64
    skipped: np.ndarray  # (s,) str: ids of users points without a usable vector or profile

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_points(cls, points: Iterable[Point], genders: list[str] | None = None) -> Table:
        """The users points (with vectors) as a table; ``genders`` is extended in place with new names."""
        genders = genders if genders is not None else []
        bit = {g: 1 << j for j, g in enumerate(genders)}
        cols: dict[str, list[Any]] = {c: [] for c in ("ids", "uids", "vec", "g", "s", "age", "lo", "hi", "kth", "k")}
        liked_len: list[int] = []
        liked: list[str] = []
        taste_row: list[int] = []
        tastes: list[np.ndarray] = []
        tops: list[list[float] | None] = []
        skipped: list[str] = []
        for p in points:
            payload = p.payload or {}
            vec = None if p.vector is None else np.asarray(p.vector, dtype=np.float32)
            if vec is None or vec.ndim != 1 or vec.size == 0 or not np.isfinite(vec).all() or not vec.any():
                skipped.append(p.id)
                continue
            try:
                prof = Profile.from_payload(payload, where=f"users point {p.id}")
            except InvalidInput as exc:
                log.warning("reciprocity refresh skips a user: %s", exc)
                skipped.append(p.id)
                continue
            for name in (prof.gender, *prof.seeking):
                if name not in bit:
                    if len(genders) >= 62:
                        raise InvalidInput("profiles: more than 62 distinct genders are not supported")
                    bit[name] = 1 << len(genders)
                    genders.append(name)
            cols["ids"].append(p.id)
            cols["uids"].append(prof.user_id)
            cols["vec"].append(vec)
            cols["g"].append(bit[prof.gender])
            cols["s"].append(sum(bit[s] for s in set(prof.seeking)))
            cols["age"].append(prof.age)
            cols["lo"].append(prof.age_min)
            cols["hi"].append(prof.age_max)
            lk = [str(u) for u in payload.get(LIKED_IDS) or []]
            liked_len.append(len(lk))
            liked.extend(lk)
            t = payload.get(TASTE)
            taste_row.append(len(tastes) if t is not None else -1)
            if t is not None:
                tastes.append(np.asarray(t, dtype=np.float32))
            kth, top = payload.get(KTH_SIM), payload.get(KTH_TOP)
            cols["kth"].append(float(kth) if isinstance(kth, int | float) else np.nan)
            kk = payload.get(KTH_K)
            cols["k"].append(kk if isinstance(kk, int) else -1)
            tops.append(window_of(top))
        n = len(cols["ids"])
        width = max([8, *(len(t) for t in tops if t is not None)])
        top_arr = np.full((n, width), np.nan)
        top_len = np.full(n, -1, dtype=np.int64)
        for i, t in enumerate(tops):
            if t is not None:
                top_arr[i, : len(t)] = t
                top_len[i] = len(t)
        d = len(cols["vec"][0]) if n else 1
        return cls(
            ids=np.array(cols["ids"], dtype=str) if n else np.zeros(0, _STR),
            user_ids=np.array(cols["uids"], dtype=str) if n else np.zeros(0, _STR),
            matrix=np.stack(cols["vec"]) if n else np.zeros((0, d), np.float32),
            genders=genders,
            gender=np.array(cols["g"], dtype=np.int64),
            seeks=np.array(cols["s"], dtype=np.int64),
            age=np.array(cols["age"], dtype=np.int64),
            lo=np.array(cols["lo"], dtype=np.int64),
            hi=np.array(cols["hi"], dtype=np.int64),
            liked_ptr=np.concatenate([[0], np.cumsum(liked_len, dtype=np.int64)]).astype(np.int64),
            liked=np.array(liked, dtype=str) if liked else np.zeros(0, _STR),
            taste_row=np.array(taste_row, dtype=np.int64),
            tastes=np.stack(tastes) if tastes else np.zeros((0, d), np.float32),
            kth=np.array(cols["kth"], dtype=np.float64),
            kth_k=np.array(cols["k"], dtype=np.int64),
            top=top_arr,
            top_len=top_len,
            skipped=np.array(skipped, dtype=str) if skipped else np.zeros(0, _STR),
        )

    def take(self, rows: np.ndarray | Sequence[int]) -> Table:
        """The rows ``rows`` (in that order) as a table sharing this one's gender list."""
        r = np.asarray(rows, dtype=np.int64)
        starts, stops = self.liked_ptr[r], self.liked_ptr[r + 1]
        lens = stops - starts
        offsets = np.cumsum(lens) - lens
        idx = np.repeat(starts - offsets, lens) + np.arange(int(lens.sum()))
        used = self.taste_row[r]
        has = used >= 0
        new_taste = np.full(len(r), -1, dtype=np.int64)
        new_taste[has] = np.arange(int(has.sum()))
        return Table(
            ids=self.ids[r], user_ids=self.user_ids[r], matrix=self.matrix[r], genders=self.genders,
            gender=self.gender[r], seeks=self.seeks[r], age=self.age[r], lo=self.lo[r], hi=self.hi[r],
            liked_ptr=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            liked=self.liked[np.asarray(idx, dtype=np.int64)], taste_row=new_taste, tastes=self.tastes[used[has]],
            kth=self.kth[r], kth_k=self.kth_k[r], top=self.top[r], top_len=self.top_len[r], skipped=self.skipped,
        )  # fmt: skip

    def concat(self, other: Table) -> Table:
        """This table's rows, then ``other``'s (same gender list); ``skipped`` is this one's."""
        if other.genders is not self.genders:
            raise InvalidInput("Table.concat: the tables number genders differently")
        mats = [t.matrix for t in (self, other) if len(t)] or [self.matrix]
        tastes = [t.tastes for t in (self, other) if len(t.tastes)] or [self.tastes]
        width = max(self.top.shape[1], other.top.shape[1])
        tops = [np.pad(t.top, ((0, 0), (0, width - t.top.shape[1])), constant_values=np.nan) for t in (self, other)]
        shift = np.where(other.taste_row >= 0, other.taste_row + len(self.tastes), -1)
        return Table(
            ids=np.concatenate([self.ids, other.ids]), user_ids=np.concatenate([self.user_ids, other.user_ids]),
            matrix=np.concatenate(mats), genders=self.genders,
            gender=np.concatenate([self.gender, other.gender]), seeks=np.concatenate([self.seeks, other.seeks]),
            age=np.concatenate([self.age, other.age]), lo=np.concatenate([self.lo, other.lo]),
            hi=np.concatenate([self.hi, other.hi]),
            liked_ptr=np.concatenate([self.liked_ptr, other.liked_ptr[1:] + self.liked_ptr[-1]]),
            liked=np.concatenate([self.liked, other.liked]), taste_row=np.concatenate([self.taste_row, shift]),
            tastes=np.concatenate(tastes), kth=np.concatenate([self.kth, other.kth]),
            kth_k=np.concatenate([self.kth_k, other.kth_k]), top=np.concatenate(tops),
            top_len=np.concatenate([self.top_len, other.top_len]), skipped=self.skipped,
        )  # fmt: skip

    def replaced(self, keep: np.ndarray, fresh: Table) -> Table:
        """The rows where ``keep`` (bool, (n,)) is set, then ``fresh``'s rows (same gender list), copying the
        (n, d) matrix once (it may be a read-only map of the cache file)."""
        idx = np.flatnonzero(keep)
        matrix = np.empty((len(idx) + len(fresh), self.matrix.shape[1]), dtype=np.float32)
        if len(idx) == len(self):
            matrix[: len(idx)] = self.matrix
        else:
            np.take(self.matrix, idx, axis=0, out=matrix[: len(idx)])
        if len(fresh):
            matrix[len(idx) :] = fresh.matrix
        bare = dataclasses.replace(self, matrix=np.zeros((len(self), 1), np.float32))
        out = bare.take(idx).concat(dataclasses.replace(fresh, matrix=np.zeros((len(fresh), 1), np.float32)))
        out.matrix = matrix
        return out

    def groups(self) -> Groups:
        return Groups(self.gender, self.seeks, self.age, self.lo, self.hi)

    def liked_of(self, i: int) -> np.ndarray:
        return self.liked[self.liked_ptr[i] : self.liked_ptr[i + 1]]

    def rows_liking(self, user_ids: set[str]) -> set[int]:
        """Rows whose like history names one of ``user_ids``."""
        if not user_ids or len(self.liked) == 0:
            return set()
        pos = np.flatnonzero(np.isin(self.liked, np.array(sorted(user_ids), dtype=str)))
        return set((np.searchsorted(self.liked_ptr, pos, side="right") - 1).tolist())

    def stored_taste(self, i: int) -> np.ndarray | None:
        j = int(self.taste_row[i])
        return None if j < 0 else self.tastes[j]

    def same_user(self, i: int, other: Table, j: int) -> bool:
        """Whether row i here and row j of ``other`` have the same vector and compatibility attributes."""
        return (
            self.gender[i] == other.gender[j] and self.seeks[i] == other.seeks[j] and self.age[i] == other.age[j]
            and self.lo[i] == other.lo[j] and self.hi[i] == other.hi[j]
            and np.array_equal(self.matrix[i], other.matrix[j])
        )  # fmt: skip

    def same_likes(self, i: int, other: Table, j: int) -> bool:
        a, b = self.stored_taste(i), other.stored_taste(j)
        same_taste = (a is None) == (b is None) and (a is None or np.array_equal(a, b))  # type: ignore[arg-type]
        return same_taste and np.array_equal(self.liked_of(i), other.liked_of(j))

    def same_stats(self, i: int, other: Table, j: int) -> bool:
        """Whether row i here and row j of ``other`` hold the same stored statistics."""
        n = int(self.top_len[i])
        return (
            self.kth_k[i] == other.kth_k[j] and n == other.top_len[j]
            and (self.kth[i] == other.kth[j] or (np.isnan(self.kth[i]) and np.isnan(other.kth[j])))
            and np.array_equal(self.top[i, : max(n, 0)], other.top[j, : max(n, 0)])
        )  # fmt: skip

    def set_stats(self, i: int, kth: float, k: int, window: list[float]) -> None:
        if len(window) > self.top.shape[1]:
            self.top = np.pad(self.top, ((0, 0), (0, len(window) - self.top.shape[1])), constant_values=np.nan)
        self.kth[i], self.kth_k[i], self.top_len[i] = kth, k, len(window)
        self.top[i] = np.nan
        self.top[i, : len(window)] = window

    def set_taste(self, i: int, taste: list[float] | None) -> None:
        if taste is None:
            self.taste_row[i] = -1
            return
        self.taste_row[i] = len(self.tastes)
        self.tastes = np.concatenate([self.tastes, np.asarray(taste, dtype=np.float32)[None, :]])


_ARRAYS = ("ids", "user_ids", "matrix", "gender", "seeks", "age", "lo", "hi", "liked_ptr", "liked", "taste_row")
_ARRAYS2 = ("tastes", "kth", "kth_k", "top", "top_len", "skipped")


def save(store: Store, table: Table, stats_version: str = "") -> str | None:
    """Write ``table`` as the cache of the users collection as it is now, and record it in META.
    ``stats_version``: the ``Version.key`` of the statistics blocks the table's statistics equal
    (``engine.reciprocity.blocks``; "" for none). Returns the
    new token (None where the store keeps no cache). A failure to write is logged, not raised: the next
    incremental pass then scrolls. Files: ``users-<token>/`` (one ``.npy`` per array, written under a
    temporary name and renamed whole) and the empty ``journal-<token>``."""
    folder = store.cache_folder()
    if folder is None:
        return None
    token = secrets.token_hex(8)
    tmp, final = folder / f"tmp-{token}", folder / f"users-{token}"
    try:
        tmp.mkdir(parents=True)
        arrays = {a: getattr(table, a) for a in (*_ARRAYS, *_ARRAYS2)}
        arrays["format"] = np.array(FORMAT)
        arrays["stats_version"] = np.array(stats_version, dtype=str)
        arrays["genders"] = np.array(table.genders, dtype=str).reshape(-1)
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        os.replace(tmp, final)
        with open(journal_path(folder, token), "x"):
            pass
    except OSError as exc:
        log.warning("cannot save the refresh cache in %s: %s (the next refresh scrolls the store)", folder, exc)
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    store.set_cache_token(token)  # only now can it be trusted; older files are removed
    return token


def load(store: Store) -> tuple[Table, list[str], str] | None:
    """The cached table, the ids written since it was saved and the statistics version it was saved with
    (:func:`save`), or None when there is no cache to trust. The matrix is a read-only map of its file
    (copied by :meth:`Table.replaced`)."""
    folder, token = store.cache_folder(), store.cache_token()
    if folder is None or token is None:
        return None
    journal = read_journal(folder, token)
    if journal is None:
        log.warning("the refresh cache %s has no journal; not used", token)
        return None
    where = folder / f"users-{token}"
    try:
        if np.load(where / "format.npy", allow_pickle=False).reshape(-1).tolist() != [FORMAT]:
            return None
        arrays = {a: np.load(where / f"{a}.npy", allow_pickle=False) for a in (*_ARRAYS, *_ARRAYS2) if a != "matrix"}
        arrays["matrix"] = np.load(where / "matrix.npy", mmap_mode="r", allow_pickle=False)
        genders = [str(g) for g in np.load(where / "genders.npy", allow_pickle=False)]
        version_arr = np.load(where / "stats_version.npy", allow_pickle=False).reshape(-1)  # saved as (1,)
        stats_version = str(version_arr[0]) if version_arr.size else ""
    except (OSError, ValueError) as exc:
        log.warning("cannot read the refresh cache %s: %s; not used", token, exc)
        return None
    table = Table(genders=genders, **arrays)
    n = len(table.ids)
    shapes_ok = (
        all(len(getattr(table, a)) == n for a in ("user_ids", "matrix", "gender", "seeks", "age", "lo", "hi"))
        and all(len(getattr(table, a)) == n for a in ("taste_row", "kth", "kth_k", "top", "top_len"))
        and len(table.liked_ptr) == n + 1
        and (n == 0 or int(table.liked_ptr[-1]) == len(table.liked))
        and int(table.taste_row.max(initial=-1)) < len(table.tastes)
    )
    if not shapes_ok:
        log.warning("the refresh cache %s is inconsistent; not used", token)
        return None
    return table, journal, stats_version


def overlay(table: Table, stats: Stats | None) -> None:
    """Set every row's statistics to what ``stats`` (the stored blocks, ``engine.reciprocity.blocks``) holds
    for it: NaN / -1 where it holds none, and where ``stats`` is None (a store with no blocks yet: its
    statistics are in the payloads the table was read from) nothing changes."""
    if stats is None:
        return
    r = stats.rows(table.ids)
    hit = r >= 0
    rr = np.maximum(r, 0)
    width = max(table.top.shape[1], stats.top.shape[1])
    top = np.full((len(table), width), np.nan)
    if len(stats):
        top[:, : stats.top.shape[1]] = stats.top[rr]
        table.kth = np.where(hit, stats.kth[rr], np.nan)
        table.kth_k = np.where(hit, stats.kth_k[rr], -1).astype(np.int64)
        table.top_len = np.where(hit, stats.top_len[rr], -1).astype(np.int64)
    else:
        table.kth = np.full(len(table), np.nan)
        table.kth_k = np.full(len(table), -1, np.int64)
        table.top_len = np.full(len(table), -1, np.int64)
    top[~hit] = np.nan
    table.top = top


def table_stats(table: Table) -> Stats:
    """The table's statistics as :class:`~engine.reciprocity.blocks.Stats` (every row; what a pass over the
    whole table writes)."""
    return Stats.of(table.ids, table.kth, table.kth_k, table.top, table.top_len)


def cache_files(folder: Path) -> list[Path]:
    """The entries of a cache folder (for tests and the bench)."""
    return sorted(folder.iterdir()) if folder.is_dir() else []
