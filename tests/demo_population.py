"""A simulator ``Population`` straight from the demo-data generator's latents (no photos): what the
simulation and calibration tests run their machinery on.

Importable from any test module (``pythonpath = ["tests"]``).
"""

from __future__ import annotations

import numpy as np

from engine.settings import Settings
from evaluation.demo_data import make_user
from evaluation.simulation import Population


def demo_population(n: int, seed: int) -> Population:
    """Users 1..n of the demo population of ``seed``; a bound the CSV would leave blank takes the settings'."""
    us = [make_user(seed, i) for i in range(1, n + 1)]
    s = Settings(progress=False)  # type: ignore[call-arg]  # pydantic-settings fills the rest
    return Population(
        user_ids=[u.user_id for u in us],
        gender=np.array([u.gender for u in us], dtype=object),
        age=np.array([u.age for u in us]),
        seeking=[u.seeking for u in us],
        age_min=np.array([u.age_min if u.window_given[0] else s.min_age for u in us]),
        age_max=np.array([u.age_max if u.window_given[1] else s.max_age for u in us]),
        attractiveness=np.array([u.attractiveness for u in us]),
        looks=np.vstack([u.looks for u in us]),
    )
