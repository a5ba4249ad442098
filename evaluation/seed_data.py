"""The seed's data layout, made from a synthetic population: real profiles plus generated images with a mapping.

``make_seed_data(out, users, generated_per_user, seed)`` writes::

    raw/profiles/<user>_<n>.jpg            the demo population's photos (see :mod:`evaluation.demo_data`)
    metadata.csv, raw/users.csv, ...       as ``make_demo_data`` writes them
    augmented/generated/gen_<NNNN>.jpg     further photos of the same people, drawn from their latents with
                                           a stream of their own (new pose, lighting, background, clothes)
    augmented/generated/mapping.csv        image_path,source_user (one row per generated image)

so training on generated images and validating on real photos can be tried without the user's data.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from engine.errors import InvalidInput
from evaluation.demo_data import make_demo_data, make_user
from evaluation.demo_photos import _encode, render_photo

GENERATED_STREAM = 0x6E6E  # apart from the real photos' stream, so no generated image repeats a real one


def make_seed_data(out: Path, users: int, generated_per_user: int, seed: int) -> Path:
    """Write the seed layout (module docstring) under ``out``; deterministic per ``seed``. Returns ``out``.

    Raises:
        InvalidInput: ``generated_per_user < 1``, or what :func:`make_demo_data` raises.
    """
    if generated_per_user < 1:
        raise InvalidInput(f"generated_per_user: must be at least 1, got {generated_per_user}")
    out = Path(out)
    make_demo_data(out, users=users, seed=seed)
    gen_dir = out / "augmented" / "generated"
    gen_dir.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(users)))
    rows: list[tuple[str, str]] = []
    n = 0
    for i in range(1, users + 1):
        user = make_user(seed, i, width)
        for j in range(generated_per_user):
            n += 1
            rng = np.random.default_rng([seed, i, j, GENERATED_STREAM])
            name = f"gen_{n:04d}.jpg"
            (gen_dir / name).write_bytes(_encode(render_photo(user, rng), "JPEG", quality=90))
            rows.append((name, user.user_id))
    with (gen_dir / "mapping.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("image_path", "source_user"))
        writer.writerows(rows)
    return out
