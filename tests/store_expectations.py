"""What the store must hold after ingesting a metadata CSV, derived from the CSV and the files' bytes alone
(never from the job's code), so ingestion and reliability tests check it the same, independent way.

Importable from any test module: ``pythonpath = ["tests"]`` in pyproject.toml.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

from engine.schema import photo_point_id

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
