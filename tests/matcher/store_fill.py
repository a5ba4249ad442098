"""A store of ``n`` random 8-d users, alternating gender, all 30 and seeking 25-35: what the batch-command
tests (``refresh``, ``rebuild-model``) start from."""

from __future__ import annotations

import numpy as np

from engine.schema import USERS, user_point_id
from engine.settings import Settings
from engine.store import open_store
from engine.store.base import Point


def add_random_users(settings: Settings, n: int, rng: np.random.Generator) -> None:
    with open_store(settings) as store:
        store.setup("test-encoder", 8)
        points = []
        for i in range(n):
            v = rng.standard_normal(8).astype(np.float32)
            g = "female" if i % 2 else "male"
            payload = {"user_id": f"u{i}", "gender": g, "age": 30, "seeking": ["male" if i % 2 else "female"],
                       "age_min": 25, "age_max": 35}  # fmt: skip
            points.append(Point(id=user_point_id(f"u{i}"), vector=v / np.linalg.norm(v), payload=payload))
        store.upsert(USERS, points)
