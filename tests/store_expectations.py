"""What the store must hold after ingesting a metadata CSV, derived from the CSV and the files' bytes alone
(never from the job's code), so ingestion and reliability tests check it the same, independent way.

Importable from any test module: ``pythonpath = ["tests"]`` in pyproject.toml.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.schema import PHOTOS, USERS, photo_point_id
from engine.settings import Settings
from engine.store import open_store

GENDERS = {"f": "female", "m": "male", "nb": "nonbinary"}


def expected_photos(root: Path, metadata: Path, encoder_id: str) -> dict[str, dict[str, Any]]:
    """photo point id -> payload, straight from the CSV and the files' bytes (not from the job's code)."""
    out: dict[str, dict[str, Any]] = {}
    with open(metadata, encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            sha = hashlib.sha256((root / row["image_path"]).read_bytes()).hexdigest()
            g = row["gender"].strip().lower()
            out[photo_point_id(row["user_id"], sha)] = {
                "user_id": row["user_id"],
                "gender": GENDERS.get(g, g),
                "age": int(row["age"]),
                "photo_sha256": sha,
                "source_path": row["image_path"],
                "encoder_id": encoder_id,
            }
    return out


@dataclass
class Dump:
    """Every point of the two collections: point id -> (payload, vector float32), and exact counts."""

    photos: dict[str, tuple[dict[str, Any], np.ndarray]]
    users: dict[str, tuple[dict[str, Any], np.ndarray]]
    counts: dict[str, int] = field(default_factory=dict)


def dump_store(settings: Settings) -> Dump:
    """Every point of both collections with payloads and vectors, and exact counts (opens and closes it)."""

    def vec(v: Any) -> np.ndarray:
        return np.asarray(v, dtype=np.float32)

    with open_store(settings) as store:
        photos = {p.id: (p.payload, vec(p.vector)) for p in store.scroll(PHOTOS, with_vectors=True)}
        users = {p.id: (p.payload, vec(p.vector)) for p in store.scroll(USERS, with_vectors=True)}
        counts = {PHOTOS: store.count(PHOTOS), USERS: store.count(USERS)}
    return Dump(photos, users, counts)
