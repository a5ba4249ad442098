"""The simulated users: demographics from ``metadata.csv`` and hidden traits from ``truth.json``."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import InvalidInput
from engine.schema import parse_seeking
from engine.settings import Settings


@dataclass(frozen=True)
class Population:
    """Users with demographics (from metadata.csv) and hidden traits (from truth.json), index-aligned."""

    user_ids: list[str]
    gender: np.ndarray  # (n,) str
    age: np.ndarray  # (n,) int
    seeking: list[tuple[str, ...]]
    age_min: np.ndarray  # (n,) int; a missing bound is the settings' min_age
    age_max: np.ndarray  # (n,) int; a missing bound is the settings' max_age
    attractiveness: np.ndarray  # (n,) float in [0, 1]
    looks: np.ndarray  # (n, D) float64 unit vectors

    @property
    def n(self) -> int:
        return len(self.user_ids)

    @staticmethod
    def user_ids_in(root: Path) -> list[str]:
        """The user ids of ``root/metadata.csv`` (the demo-data layout), in file order, without repeats."""
        path = root / "metadata.csv"
        if not path.is_file():
            raise InvalidInput(f"{path}: not found")
        with path.open(newline="", encoding="utf-8") as fh:
            return list(dict.fromkeys((row.get("user_id") or "").strip() for row in csv.DictReader(fh)))

    @classmethod
    def from_dir(cls, root: Path, settings: Settings, *, only: set[str] | None = None) -> Population:
        """Read ``root/metadata.csv`` and ``root/truth.json`` (the demo-data layout); keep users in ``only``.

        Raises ``InvalidInput`` naming the file and row of a bad or missing value.
        """
        meta_path, truth_path = root / "metadata.csv", root / "truth.json"
        for p in (meta_path, truth_path):
            if not p.is_file():
                raise InvalidInput(f"{p}: not found (make the population with `matcher make-demo-data`)")
        try:
            truth = json.loads(truth_path.read_text(encoding="utf-8"))["users"]
        except (ValueError, KeyError) as exc:
            raise InvalidInput(f"{truth_path}: not a truth.json with a 'users' object ({exc})") from exc
        rows: dict[str, dict[str, str]] = {}
        with meta_path.open(newline="", encoding="utf-8") as fh:
            for line, row in enumerate(csv.DictReader(fh), start=2):
                uid = (row.get("user_id") or "").strip()
                if not uid:
                    raise InvalidInput(f"{meta_path}:{line}: empty user_id")
                rows.setdefault(uid, row | {"_line": str(line)})
        ids = sorted(u for u in rows if only is None or u in only)
        if not ids:
            raise InvalidInput(
                f"{meta_path}: no users" + (" that are in the store" if only is not None else "")
            )
        gender, age, seeking, amin, amax, attr, looks = [], [], [], [], [], [], []
        for uid in ids:
            row = rows[uid]
            where = f"{meta_path}:{row['_line']}"
            if uid not in truth:
                raise InvalidInput(f"{truth_path}: user {uid!r} (in metadata.csv) has no truth entry")
            t = truth[uid]
            try:
                g = str(row["gender"]).strip().lower()
                gender.append(g)
                age.append(int(row["age"]))
                seeking.append(tuple(parse_seeking(row.get("seeking"), g, settings.genders)))
                amin.append(int(row["age_min"]) if (row.get("age_min") or "").strip() else settings.min_age)
                amax.append(int(row["age_max"]) if (row.get("age_max") or "").strip() else settings.max_age)
                attr.append(float(t["attractiveness"]))
                looks.append(np.asarray(t["looks"], dtype=np.float64))
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidInput(f"{where} / truth of {uid}: {exc}") from exc
        lk = np.vstack(looks)
        lk /= np.maximum(np.linalg.norm(lk, axis=1, keepdims=True), 1e-12)
        return cls(
            user_ids=ids,
            gender=np.array(gender, dtype=object),
            age=np.array(age),
            seeking=seeking,
            age_min=np.array(amin),
            age_max=np.array(amax),
            attractiveness=np.array(attr),
            looks=lk,
        )

    def compatible(self) -> np.ndarray:
        """(n, n) bool: both sides accept each other, never oneself — ``engine.compatibility``'s filter."""
        genders = sorted(set(self.gender.tolist()) | {g for s in self.seeking for g in s})
        seeks = np.array([[g in s for g in genders] for s in self.seeking])  # (n, G)
        gidx = np.array([genders.index(g) for g in self.gender])
        accepts_gender = seeks[:, gidx]  # [i, j]: i seeks j's gender
        accepts_age = (self.age[None, :] >= self.age_min[:, None]) & (
            self.age[None, :] <= self.age_max[:, None]
        )
        accepts = accepts_gender & accepts_age
        out = accepts & accepts.T
        np.fill_diagonal(out, False)
        return out

    def percentile(self) -> np.ndarray:
        """(n,) attractiveness as a mid-rank percentile in (0, 1) within each user's own gender."""
        q = np.empty(self.n)
        for g in set(self.gender.tolist()):
            idx = np.flatnonzero(self.gender == g)
            order = np.argsort(self.attractiveness[idx], kind="stable")
            ranks = np.empty(idx.size)
            ranks[order] = np.arange(idx.size)
            q[idx] = (ranks + 0.5) / idx.size
        return q
