"""A synthetic population of dating profiles: photos carrying an identity and attractiveness, plus metadata.

Each user has a latent ``looks`` unit vector (face shape, skin/hair/eye colours, hair style, accessories), a
latent ``attractiveness`` in [0, 1] drawn independently of ``looks`` (visible as facial symmetry, feature
proportions and skin clarity), and demographics (gender, age, seeking, age window). Every photo of a user is
drawn from the same latents and differs in pose (offset, scale, small rotation, head turn), crop, size and
aspect, lighting (brightness, contrast, colour cast, light direction), background and clothes. The latents are
kept in ``truth.json`` so the simulation and the embedding report can score against them. The drawing itself
is in ``evaluation.demo_photos``.

Layout written under ``out``::

    photos/<user_id>/<n>.jpg|png     one to four photos per user, n = 1..k
    metadata.csv                     user_id,image_path,gender,age,seeking,age_min,age_max (one row per
                                     photo, image_path relative to out, seeking |-separated, an empty age
                                     bound = no limit)
    truth.json                       {"version": 1, "seed", "look_dim", "users": {id: {gender, age,
                                     attractiveness, looks}}}
    raw/profiles/<user_id>_<n>.jpg   the original data plan's layout (the same photos, all as JPEG)
    raw/users.csv                    one row per user: user_id,gender,age,seeking,age_min,age_max,n_photos

Everything is a function of ``seed`` only (byte-identical files on every run); user ``i`` depends only on
``(seed, i)``, so a larger population extends a smaller one with the same seed.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import InvalidInput
from engine.schema import Profile
from engine.settings import Settings
from evaluation.demo_photos import render_user_photos

log = logging.getLogger(__name__)

LOOK_DIM = 16
TRUTH_VERSION = 1
METADATA_COLUMNS = ("user_id", "image_path", "gender", "age", "seeking", "age_min", "age_max")
USERS_COLUMNS = ("user_id", "gender", "age", "seeking", "age_min", "age_max", "n_photos")
MIN_AGE, MAX_AGE = 18, 60

# The map from looks to visible traits is fixed (independent of the seed), so a trait means the same in every
# population: an orthogonal rotation keeps the traits uncorrelated when looks is uniform on the sphere.
_TRAIT_BASIS = np.linalg.qr(np.random.default_rng(20_251_125).standard_normal((LOOK_DIM, LOOK_DIM)))[0].T



# An age bound left blank in the CSV is filled by ingestion with the settings' bounds; these are their defaults.
_DEFAULT_MIN_AGE = int(Settings.model_fields["min_age"].default)
_DEFAULT_MAX_AGE = int(Settings.model_fields["max_age"].default)


@dataclass(frozen=True)
class DemoUser(Profile):
    """One synthetic user: their profile (the engine's ``Profile``), latents and the per-user constants its
    photos share.

    ``window_given`` says which of ``age_min``/``age_max`` the metadata CSV states; a bound not given is
    written blank (ingestion fills it from ``MATCHER_MIN_AGE``/``MAX_AGE``) and holds that setting's default here.
    """

    window_given: tuple[bool, bool]
    attractiveness: float
    looks: np.ndarray  # (LOOK_DIM,) float64, unit norm
    n_photos: int
    traits: np.ndarray  # (LOOK_DIM,) in (0, 1): Phi of the rotated looks
    asym_dir: np.ndarray  # (4,) in [-1, 1]: which way this face is asymmetric (amount: 1 - attractiveness)
    moles: np.ndarray  # (n, 3): face coordinates u, v in [-1, 1] and radius factor; more when less attractive


def make_demo_data(
    out: Path, users: int, seed: int, *, overwrite: bool = False, progress: bool = False
) -> Path:
    """Write a synthetic population of ``users`` profiles under ``out`` (layout in the module docstring).

    Deterministic per ``seed``. Raises ``InvalidInput`` if ``users < 1`` or ``out`` already holds files
    (pass ``overwrite=True`` to replace the demo files there; other files are left alone). Returns ``out``.
    """
    out = Path(out)
    if users < 1:
        raise InvalidInput(f"users: must be at least 1, got {users}")
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InvalidInput(f"{out}: folder is not empty (pass overwrite to replace the demo files in it)")
        for name in ("photos", "raw"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("metadata.csv", "truth.json"):
            (out / name).unlink(missing_ok=True)
    (out / "photos").mkdir(parents=True, exist_ok=True)
    (out / "raw" / "profiles").mkdir(parents=True, exist_ok=True)

    width = max(3, len(str(users)))
    population = [make_user(seed, i, width) for i in range(1, users + 1)]
    meta_rows: list[list[str]] = []
    iterator: Sequence[DemoUser] = population
    if progress:
        from tqdm import tqdm

        iterator = tqdm(population, desc="demo users", unit="user")  # type: ignore[assignment]
    for user in iterator:
        user_dir = out / "photos" / user.user_id
        user_dir.mkdir(exist_ok=True)
        for n, (data, ext, raw_jpeg) in enumerate(render_user_photos(user, seed), start=1):
            rel = f"photos/{user.user_id}/{n}.{ext}"
            (out / rel).write_bytes(data)
            (out / "raw" / "profiles" / f"{user.user_id}_{n}.jpg").write_bytes(raw_jpeg)
            meta_rows.append([user.user_id, rel, *_demographic_fields(user)])

    with (out / "metadata.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(METADATA_COLUMNS)
        w.writerows(meta_rows)
    with (out / "raw" / "users.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(USERS_COLUMNS)
        w.writerows([[u.user_id, *_demographic_fields(u), str(u.n_photos)] for u in population])
    truth = {
        "version": TRUTH_VERSION,
        "seed": seed,
        "look_dim": LOOK_DIM,
        "users": {
            u.user_id: {
                "gender": u.gender,
                "age": u.age,
                "attractiveness": round(u.attractiveness, 6),
                "looks": [round(float(x), 7) for x in u.looks],
            }
            for u in population
        },
    }
    (out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    log.info("wrote %d users, %d photos under %s", len(population), len(meta_rows), out)
    return out


def _demographic_fields(u: DemoUser) -> list[str]:
    return [
        u.gender,
        str(u.age),
        "|".join(u.seeking),
        str(u.age_min) if u.window_given[0] else "",
        str(u.age_max) if u.window_given[1] else "",
    ]


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return np.asarray([0.5 * (1.0 + math.erf(float(x) / math.sqrt(2.0))) for x in z])


def make_user(seed: int, index: int, width: int = 3) -> DemoUser:
    """User number ``index`` (1-based) of the population of ``seed``; depends on nothing else."""
    rng = np.random.default_rng([seed, index, 0xD3A0])
    r = rng.random()
    gender = "nonbinary" if r < 0.03 else ("female" if r < 0.515 else "male")
    # Skewed young, like the users of a dating app: mode in the mid twenties, a tail to 60.
    age = int(min(MAX_AGE, MIN_AGE + math.floor(rng.gamma(2.2, 5.5))))
    if gender == "nonbinary":
        seeking: tuple[str, ...] = ("female", "male", "nonbinary")
    else:
        other = "male" if gender == "female" else "female"
        s = rng.random()
        seeking = (other,) if s < 0.85 else ((gender,) if s < 0.92 else ("female", "male"))
    age_min = max(MIN_AGE, age - int(rng.integers(2, 11)))
    age_max = age + int(rng.integers(2, 13))
    min_given, max_given = rng.random() >= 0.12, rng.random() >= 0.12
    looks = rng.standard_normal(LOOK_DIM)
    looks /= np.linalg.norm(looks)
    attractiveness = float(rng.beta(2.2, 2.2))
    traits = _normal_cdf(math.sqrt(LOOK_DIM) * (_TRAIT_BASIS @ looks))
    n_moles = int(rng.poisson(1.0 + 9.0 * (1.0 - attractiveness) ** 1.5))
    moles = np.column_stack(
        [rng.uniform(-0.7, 0.7, n_moles), rng.uniform(-0.5, 0.8, n_moles), rng.uniform(0.6, 1.4, n_moles)]
    )
    return DemoUser(
        user_id=f"user_{index:0{width}d}",
        gender=gender,
        age=age,
        seeking=seeking,
        age_min=age_min if min_given else _DEFAULT_MIN_AGE,
        age_max=age_max if max_given else _DEFAULT_MAX_AGE,
        window_given=(min_given, max_given),
        attractiveness=attractiveness,
        looks=looks,
        n_photos=int(rng.choice([1, 2, 3, 4], p=[0.15, 0.3, 0.3, 0.25])),
        traits=traits,
        asym_dir=rng.uniform(-1.0, 1.0, 4),
        moles=moles,
    )
