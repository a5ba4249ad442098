"""Settings, read from ``MATCHER_*`` environment variables (``__`` separates nested fields).

Built only at the edges (the CLI, ``recommend()`` when called without ``settings=``) and passed down,
so every part can be built in a test without environment variables::

    MATCHER_QDRANT_URL=http://qdrant:6333 MATCHER_RECOMMEND__OVERSAMPLE=8 matcher recommend u42
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.errors import ConfigError
from engine.redaction import register_secret, register_url_secrets

ENV_PREFIX = "MATCHER_"

DEFAULT_GENDERS: tuple[str, ...] = ("female", "male", "nonbinary")
GENDER_ALIASES: dict[str, str] = {"f": "female", "m": "male", "nb": "nonbinary", "non-binary": "nonbinary"}


class ImageSettings(BaseModel):
    """Limits applied when a photo is decoded (before the encoder sees it)."""

    min_side: int = Field(64, ge=1, description="Smallest accepted width or height, in pixels.")
    max_pixels: int = Field(40_000_000, ge=1, description="Largest accepted width x height (decompression-bomb guard).")
    max_file_bytes: int = Field(30_000_000, ge=1, description="Largest accepted file size.")


class EncoderSettings(BaseModel):
    """Which encoder embeds photos, and how."""

    source: str = Field(
        "Qwen/Qwen3-VL-2B-Instruct",
        description="Hub id, a local full Qwen3-VL checkpoint, or a directory exported by `matcher train`.",
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    pixel_budget: int = Field(448 * 448, ge=32 * 32, description="Max pixels per image fed to the vision tower.")
    dim: int = Field(512, ge=8, description="Output dimension of the projection head.")
    batch_size: int = Field(8, ge=1)


class IngestSettings(BaseModel):
    write_batch_size: int = Field(256, ge=1, description="Points per upsert call.")
    retry_attempts: int = Field(5, ge=1, description="Tries per store call before the run gives up.")
    retry_max_wait_s: float = Field(8.0, gt=0, description="Cap of the exponential backoff between tries.")


class RecommendSettings(BaseModel):
    """Weights and sizes of the two-stage recommender; see engine/ranking/rerank.py for their meaning."""

    # 4: at 10,000 users (bench/recommend.py) the top 20 came from stage-1 positions <= 49 at p99 with 200
    # candidates, and 80 candidates gave the same list as 200 for 98 % of askers (99.97 % of the top 10).
    oversample: int = Field(4, ge=1, description="Candidates fetched = oversample x k.")
    reciprocity_k: int = Field(50, ge=1, description="k of the k-reciprocal check (each user's top-k compatible).")
    aggregation: Literal["harmonic", "geometric", "min", "arithmetic"] = Field(
        "harmonic", description="How the photo-only rerank fuses its two directional scores (engine.ranking.rerank)."
    )
    learned_aggregation: Literal["harmonic", "geometric", "min", "arithmetic", "product"] = Field(
        "product",
        description="How the learned model's two probabilities are fused: 'product' ranks by the expected "
        "mutual match P(A->B) * P(B->A) ** reverse_exponent (docs/results.md, fusion study).",
    )
    # 3: at 2,000 users (truth vectors, docs/results.md) success x1.32 / x1.34 / x1.37 of one-sided ANN
    # (similarity / aspiration / mixed) against x1.31 / x1.30 / x1.35 at 2, shares 0.98 / 0.81 / 0.96 against
    # 1.00 / 0.80 / 0.97; at 600 users 2 had beaten 1 (x1.30 against x1.24 in the aspiration world). The learned
    # P(B->A) is too flat (miscalibrated), so the reply is weighted up. Cost: the tiny encoder's similarity world,
    # where the model knows less about either side: 0.30 of the oracle's lift against 0.31 at 2 and 0.32 at 1
    # (with the twin features, docs/results.md). Choosing it on the log's held-out mutual pairs picks 1 in
    # every world, including those where 3 wins in simulation (the logged pairs are the engine's own picks).
    reverse_exponent: float = Field(
        3.0, ge=0.0, le=4.0, description="Weight (exponent) of P(B->A) in the 'product' fusion; > 1 favours success."
    )
    taste_blend: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the liked-people mean in the taste vector.")
    best_photo_weight: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the best photo vs the mean vector.")
    reciprocity_weight: float = Field(0.3, ge=0.0, le=1.0, description="Weight of rank reciprocity in each direction.")
    reciprocity_temperature: float = Field(0.05, gt=0.0)
    max_likes: int = Field(200, ge=0, description="Newest likes kept per user in the stored like history.")
    model: Literal["learned", "photo"] = Field(
        "learned",
        description="'learned': the preference model of engine.learned.model when one is stored "
        "(matcher rebuild-model), else photos; 'photo': always the photo-only rerank.",
    )
    # 600: at 2,000 users (aspiration, truth vectors) 200 candidates kept 0.78 of the oracle's mutual lift,
    # 400 0.80, 600 and 1,000 0.81, with success x1.30 of one-sided ANN (200: x1.24): the candidates most
    # likely to like the asker back are not those nearest the asker's taste (docs/results.md).
    learned_pool: int = Field(
        600, ge=1, description="Stage-1 candidates scored by the learned model (at least oversample x k)."
    )
    congestion_capacity: float = Field(
        0.0,
        ge=0.0,
        description="Exposure control: likes per period a user can answer; candidates receiving more are "
        "penalised (score x (capacity / likes per period) ** congestion_strength). 0 turns it off.",
    )
    congestion_strength: float = Field(1.0, ge=0.0, description="Exponent of the congestion penalty.")
    # 0 (off) by default: at 2,000 users (aspiration, truth vectors) a budget of 40 per period kept 0.64 of the
    # oracle's mutual lift, 80 kept 0.76 and none 0.78 (0.81 with learned_pool 600), while 40 gave 37 % more
    # effective matches than none; at 1,000 users 40 had cost only 0.04. It is the operator's trade of
    # mutual rate for spread-out matches: engine_capped in the simulator is the engine with it on
    # (docs/results.md, 2,000-user tuning).
    exposure_budget: int = Field(
        0,
        ge=0,
        description="Impressions per candidate per period (an ExposureLedger passed to recommend()) before "
        "they go behind every candidate under budget; 0 turns it off (engine.ranking.exposure).",
    )
    # 2: every newcomer shown k times in their first round in 0.97 / 0.98 of cases at 600 users (one slot:
    # 0.67 / 0.97), for 0.02 of the aspiration share (docs/results.md).
    explore_slots: int = Field(
        2, ge=0, description="Slots of k reserved for fresh candidates (cold start; engine.ranking.exposure); 0: off."
    )
    explore_min: int = Field(
        10, ge=0, description="A candidate is fresh below this many decisions received and impressions this period."
    )


class PreferenceSettings(BaseModel):
    """The learned preference model (engine/learned/model.py); see its docstring for the meaning."""

    prior_weight: float = Field(10.0, gt=0.0, description="Pseudo-decisions in the smoothed like rates.")
    taste_shrink: float = Field(10.0, gt=0.0, description="Pseudo-decisions pulling a taste to the population's.")
    rank: int = Field(16, ge=1, description="Taste coordinates kept per user.")
    factors: int = Field(16, ge=1, description="Latent factors per user and side.")
    als_iterations: int = Field(6, ge=1)
    als_ridge: float = Field(5.0, gt=0.0)
    holdout: float = Field(0.2, gt=0.0, lt=1.0, description="Share of pairs the weights are fitted on.")
    l2: float = Field(1e-2, ge=0.0)
    seed: int = 0
    popular: int = Field(
        500, ge=0, description="Most appealing users (by received likes) stage 1 also searches among; 0: off."
    )
    period_s: float = Field(86400.0, gt=0.0, description="One period of the log (likes per period), seconds.")


class ServeSettings(BaseModel):
    """The HTTP service (``matcher serve``)."""

    host: str = Field("127.0.0.1", description="Address to listen on (loopback unless told otherwise).")
    port: int = Field(8000, ge=0, le=65535)
    photos_root: Path | None = Field(
        None, description="Folder the photos were ingested from; /photos serves thumbnails from it only."
    )
    api_key: SecretStr | None = Field(None, description="If set, every route but /healthz needs X-API-Key.")
    max_upload_bytes: int = Field(
        10_000_000, ge=1, description="Largest image POST /embed accepts (the ingestion limits apply too)."
    )
    thumbnail_px: int = Field(256, ge=16, description="Longest side of a /photos thumbnail.")
    warm: bool = Field(
        True,
        description="Fill the process's serving copies at start-up (engine.ranking.warm: users, decisions, photos "
        "in bulk), so a user's first recommend() reads nothing one by one; off: they fill call by call.",
    )
    compare_store_path: Path | None = Field(
        None,
        description="A second embedded store of the same photos made with another encoder (e.g. the untrained "
        "one); the review page shows it beside the main store. Routes take ?store=compare.",
    )


class Settings(BaseSettings):
    """Everything that can be configured. Field ``x`` reads ``MATCHER_X``; ``a.b`` reads ``MATCHER_A__B``."""

    model_config = SettingsConfigDict(
        env_prefix="MATCHER_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    store_backend: Literal["auto", "edge", "local", "server"] = Field(
        "auto", description="'auto': a Qdrant server when qdrant_url is set, else the embedded Edge engine."
    )
    store_path: Path = Field(Path(".matcher/qdrant"), description="Folder of the embedded store.")
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    qdrant_timeout_s: float = Field(10.0, gt=0)
    collection_prefix: str = Field("", description="Prepended to collection names (several products, one server).")

    genders: tuple[str, ...] = DEFAULT_GENDERS
    min_age: int = Field(18, ge=18, description="Youngest age accepted anywhere (adults only).")
    max_age: int = Field(120, ge=18)

    images: ImageSettings = ImageSettings()
    encoder: EncoderSettings = EncoderSettings()
    ingest: IngestSettings = IngestSettings()
    recommend: RecommendSettings = RecommendSettings()
    preference: PreferenceSettings = PreferenceSettings()
    serve: ServeSettings = ServeSettings()
    progress: bool = Field(True, description="Show progress bars.")

    @field_validator("genders", mode="before")
    @classmethod
    def _split_genders(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(g.strip().lower() for g in value.replace("|", ",").split(",") if g.strip())
        return value

    @model_validator(mode="after")
    def _ages_in_order(self) -> Settings:
        if self.min_age > self.max_age:
            raise ValueError(
                f"{ENV_PREFIX}MIN_AGE={self.min_age} is above {ENV_PREFIX}MAX_AGE={self.max_age}: "
                "the minimum age must be at most the maximum age"
            )
        return self

    @property
    def resolved_backend(self) -> Literal["edge", "local", "server"]:
        if self.store_backend != "auto":
            return self.store_backend
        return "server" if self.qdrant_url else "edge"


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """``Settings`` from the ``MATCHER_*`` environment, with ``overrides`` given as field values.

    Raises ``ConfigError`` with one line per bad value, each naming the environment variable, the value
    it holds and what is allowed (never pydantic's multi-line report, which names fields, not variables).
    ``environ`` is only read to name the values; the settings themselves come from ``os.environ``.
    """
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        env = os.environ if environ is None else environ
        raise ConfigError("\n".join(_describe(err, env) for err in exc.errors())) from None
    # Every secret the settings hold is scrubbed from log records from here on (engine/redaction.py).
    for key in (settings.qdrant_api_key, settings.serve.api_key):
        register_secret(key.get_secret_value() if key is not None else None)
    register_url_secrets(settings.qdrant_url)
    return settings


# Values of these variables are never echoed (a key would end up on stderr and in logs).
_SECRET_WORDS = ("KEY", "PASSWORD", "TOKEN", "SECRET")


def _describe(err: Any, environ: Mapping[str, str]) -> str:
    """One line for one pydantic error: ``MATCHER_X='value' is not allowed: must be ...``."""
    fields = []
    for part in err["loc"]:
        if not isinstance(part, str):
            break  # an index inside a list/tuple value: the variable is the field that holds it
        fields.append(part)
    msg = str(err["msg"])
    if not fields:  # a check across fields (min_age vs max_age): its message names the variables
        return msg.removeprefix("Value error, ")
    var = ENV_PREFIX + "__".join(fields).upper()
    upper = {k.upper(): v for k, v in environ.items()}
    # A nested field may come from a JSON variable of its parent (MATCHER_RECOMMEND='{"oversample": 0}').
    candidates = (ENV_PREFIX + "__".join(fields[:n]).upper() for n in range(len(fields), 0, -1))
    name = next((c for c in candidates if c in upper), var)
    if name in upper:
        value = upper[name]
    else:
        value = err.get("input")
    shown = "(hidden)" if any(w in var or w in name for w in _SECRET_WORDS) else repr(value)
    allowed = msg.removeprefix("Value error, ").replace("Input should be", "it should be")
    where = var if name == var else f"{var} (from {name})"
    return f"{where}={shown} is not allowed: {allowed}"
