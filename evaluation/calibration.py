"""Calibration of the like-rate simulation on real data: the Columbia speed-dating experiment.

The PyPI package ``peopleanalyticsdata`` ships ``data/speed_dating.csv`` (8,378 four-minute dates between
551 students, Fisman et al. 2006): per date the rater's gender (0 = woman, 1 = man), ``attr`` (the
rater's 1–10 rating of the partner's attractiveness), ``dec`` (the rater said yes) and ``match`` (both said
yes). The file is read directly from the installed package: ``import peopleanalyticsdata`` itself fails
without setuptools (its loader imports ``pkg_resources``), so the path is found through package metadata.

What is fitted, per rater gender ``g``:
- ``P(like | partner rating r) = sigmoid(a_g + b_g r)`` by maximum likelihood on the rated dates;
- the intercept then shifted so that the curve averaged over the data's rating distribution equals the
  observed like rate over *all* dates of that gender (a few dates lack a rating);
- the rating distribution itself, used to put the simulated population on the data's 1–10 scale:
  a simulated partner's latent attractiveness in [0, 1] becomes the rating at the same quantile of the
  ratings that raters of this gender gave (``rating_at``), so the population's ratings are distributed
  as the data's, and random pairs like each other at the data's rates.
"""

from __future__ import annotations

import csv
import importlib.metadata
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import InvalidInput

DATA_GENDERS = ("female", "male")  # the data's gender codes 0 and 1


def speed_dating_path() -> Path:
    """Path of ``speed_dating.csv`` inside the installed ``peopleanalyticsdata`` package.

    Raises ``InvalidInput`` if the package (the ``eval`` extra) is not installed.
    """
    try:
        dist = importlib.metadata.distribution("peopleanalyticsdata")
    except importlib.metadata.PackageNotFoundError as exc:
        raise InvalidInput(
            "peopleanalyticsdata is not installed (pip install 'profile-matcher[eval]'); it ships speed_dating.csv"
        ) from exc
    path = Path(str(dist.locate_file("peopleanalyticsdata/data/speed_dating.csv")))
    if not path.is_file():
        raise InvalidInput(f"{path}: speed_dating.csv not found in the peopleanalyticsdata package")
    return path


@dataclass(frozen=True)
class SpeedDating:
    """The dates, one entry per (rater, partner) date. ``attr`` is NaN where the rater gave no rating."""

    gender: np.ndarray  # (n,) int: 0 woman rater, 1 man rater
    attr: np.ndarray  # (n,) float: the rater's 1-10 rating of the partner's attractiveness
    dec: np.ndarray  # (n,) bool: the rater said yes
    match: np.ndarray  # (n,) bool: both said yes
    rater: np.ndarray | None = None  # (n,) int: the rater's id (``iid``); None when the file has none

    def rater_yes_rates(self) -> tuple[np.ndarray, np.ndarray]:
        """Per rater: the share of their dates they said yes to, and how many dates they had ((r,), (r,)).

        Raises ``InvalidInput`` when the data has no rater ids."""
        if self.rater is None:
            raise InvalidInput("speed-dating data: no rater id column (iid)")
        ids, inverse, counts = np.unique(self.rater, return_inverse=True, return_counts=True)
        yes = np.bincount(inverse, weights=self.dec.astype(np.float64), minlength=ids.size)
        return yes / counts, counts


def load_speed_dating(path: Path | None = None) -> SpeedDating:
    """Read speed_dating.csv (default: the packaged copy). Raises ``InvalidInput`` naming a bad row."""
    path = path or speed_dating_path()
    gender: list[int] = []
    attr: list[float] = []
    dec: list[bool] = []
    match: list[bool] = []
    rater: list[int] = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"gender", "attr", "dec", "match"} - set(reader.fieldnames or ())
        if missing:
            raise InvalidInput(f"{path}: missing columns {sorted(missing)}")
        has_rater = "iid" in (reader.fieldnames or ())
        for line, row in enumerate(reader, start=2):
            try:
                g, d, m = int(row["gender"]), int(row["dec"]), int(row["match"])
                a = float("nan") if row["attr"] in ("", "NA") else float(row["attr"])
                if has_rater:
                    rater.append(int(row["iid"]))
            except ValueError as exc:
                raise InvalidInput(f"{path}:{line}: {exc}") from exc
            if g not in (0, 1) or d not in (0, 1) or m not in (0, 1):
                raise InvalidInput(f"{path}:{line}: gender/dec/match must be 0 or 1")
            gender.append(g)
            attr.append(a)
            dec.append(bool(d))
            match.append(bool(m))
    if not gender:
        raise InvalidInput(f"{path}: no rows")
    return SpeedDating(
        np.array(gender), np.array(attr), np.array(dec), np.array(match), np.array(rater) if has_rater else None
    )


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def fit_logistic(x: np.ndarray, y: np.ndarray, *, iters: int = 50) -> tuple[float, float]:
    """Maximum-likelihood ``(intercept, slope)`` of ``P(y=1 | x) = sigmoid(a + b x)`` by Newton's method.

    ``x`` (n,) floats, ``y`` (n,) 0/1. Raises ``InvalidInput`` if either class is empty (no finite MLE).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if y.min() == y.max():
        raise InvalidInput("fit_logistic: needs both outcomes")
    X = np.column_stack([np.ones_like(x), x])
    beta = np.array([logit(float(y.mean())), 0.0])
    for _ in range(iters):
        p = sigmoid(X @ beta)
        grad = X.T @ (y - p)
        hess = (X * (p * (1 - p))[:, None]).T @ X
        step = np.linalg.solve(hess, grad)
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(beta[0]), float(beta[1])


def solve_shift(mean_prob: Callable[[float], float], target: float, *, lo: float = -30.0, hi: float = 30.0) -> float:
    """The logit shift ``c`` with ``mean_prob(c) == target``, by bisection (``mean_prob`` increasing in c)."""
    if not 0.0 < target < 1.0:
        raise InvalidInput(f"calibration target must be in (0, 1), got {target}")
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if mean_prob(mid) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10:
            break
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class GenderFit:
    """What the data says about raters of one gender."""

    gender: str
    n_dates: int
    like_rate: float  # observed share of yes over all dates of this rater gender
    intercept: float  # of sigmoid(intercept + slope * rating), calibrated to like_rate
    slope: float
    ratings: np.ndarray  # sorted ratings these raters gave (the distribution partners are mapped onto)

    def prob(self, rating: np.ndarray | float) -> np.ndarray:
        """Fitted P(like | partner rating)."""
        return sigmoid(self.intercept + self.slope * np.asarray(rating, dtype=np.float64))

    def rating_at(self, quantile: np.ndarray | float) -> np.ndarray:
        """The rating at ``quantile`` in [0, 1] of the ratings these raters gave (linear interpolation)."""
        q = np.clip(np.asarray(quantile, dtype=np.float64), 0.0, 1.0)
        return np.quantile(self.ratings, q)


@dataclass(frozen=True)
class Calibration:
    """Per-gender fits plus the observed mutual rate; ``for_gender`` falls back to the pooled fit."""

    fits: dict[str, GenderFit]
    pooled: GenderFit
    mutual_rate: float  # share of dates that were a match (both yes)
    n_dates: int
    # Spread of the per-rater yes rate (sd over raters of the share of their dates they said yes to), and
    # the mean of 1 / (a rater's number of dates): the binomial part of that spread in a world is
    # E[m (1 - m)] times this. NaN when the data has no rater ids.
    rater_yes_sd: float = float("nan")
    mean_inverse_dates: float = float("nan")

    def for_gender(self, gender: str) -> GenderFit:
        # The data has women and men only; raters of any other gender get the pooled fit.
        return self.fits.get(gender, self.pooled)


def _fit_one(name: str, attr: np.ndarray, dec: np.ndarray) -> GenderFit:
    rated = np.isfinite(attr)
    a, b = fit_logistic(attr[rated], dec[rated])
    ratings = np.sort(attr[rated])
    observed = float(dec.mean())
    # MLE already matches the rate on rated dates; shift so the mean over the rating distribution matches
    # the rate over all dates (unrated ones included).
    shift = solve_shift(lambda c: float(sigmoid(a + c + b * ratings).mean()), observed)
    return GenderFit(name, int(dec.size), observed, a + shift, b, ratings)


@dataclass(frozen=True)
class CalibrationData:
    """A ``Calibration`` together with the data it was fitted on (for the report's curve-vs-data plot)."""

    calibration: Calibration
    data: SpeedDating

    def binned(self, gender: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Observed like rate by rounded partner rating for raters of ``gender``: ratings, rates, counts."""
        code = DATA_GENDERS.index(gender)
        sel = (self.data.gender == code) & np.isfinite(self.data.attr)
        r = np.clip(np.round(self.data.attr[sel]), 1, 10).astype(int)
        d = self.data.dec[sel]
        xs = np.unique(r)
        rates = np.array([d[r == x].mean() for x in xs])
        counts = np.array([(r == x).sum() for x in xs])
        return xs, rates, counts


def fit_calibration(data: SpeedDating | None = None) -> CalibrationData:
    """Fit the per-gender like curves (see the module docstring) on the speed-dating data."""
    data = data or load_speed_dating()
    fits = {}
    for code, name in enumerate(DATA_GENDERS):
        sel = data.gender == code
        fits[name] = _fit_one(name, data.attr[sel], data.dec[sel])
    pooled = _fit_one("pooled", data.attr, data.dec)
    rater_sd, inv_dates = float("nan"), float("nan")
    if data.rater is not None:
        rates, counts = data.rater_yes_rates()
        rater_sd, inv_dates = float(rates.std()), float(np.mean(1.0 / counts))
    cal = Calibration(fits, pooled, float(data.match.mean()), int(data.dec.size), rater_sd, inv_dates)
    return CalibrationData(cal, data)
