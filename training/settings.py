"""What shapes a training run (:class:`TrainSettings`) and what a run produced (:class:`TrainResult`).

Modes, cheapest first (``TrainSettings.mode``):

- ``head``: the tower is frozen; each training photo's pooled tower features are computed once for a few
  augmented views and cached, and only the projection head trains on them (a strong baseline in minutes);
- ``last_blocks``: the last ``unfreeze_blocks`` tower blocks and the merger train with the head;
- ``lora``: LoRA adapters (peft) on the blocks' attention and MLP linears train with the head;
- ``full``: everything trains, at a low learning rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.augment import AugmentSettings

Mode = Literal["head", "last_blocks", "lora", "full"]
LossName = Literal["supcon", "triplet", "proxy"]
DEFAULT_TOWER_LR: dict[str, float] = {"last_blocks": 2e-5, "lora": 1e-4, "full": 1e-5}
# Settings that may change between an interrupted run and its resumption (they do not change the batches).
RESUMABLE_CHANGES = frozenset(
    {"epochs", "patience", "workers", "eval_batch_size", "checkpoint_every", "cache_megapixels"}
)


class TrainSettings(BaseModel):
    """Everything that shapes a training run (stored in the run record and the exported card)."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode = Field(default="head", description="What trains besides the head; see the module docstring.")
    unfreeze_blocks: int = Field(default=4, ge=1, description="last_blocks: final blocks that train.")
    lora_rank: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    lora_targets: Literal["attn", "attn_mlp"] = "attn_mlp"
    dim: int = Field(default=512, ge=8, description="Output dimension of the head.")
    head_hidden: int = Field(default=0, ge=0, description="Hidden width of a 2-layer head; 0 = linear.")
    pixel_budget: int = Field(default=448 * 448, ge=32 * 32, description="Max pixels per image.")
    face_crop: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Preprocessing: centre face square x short side; 0 = off."
    )
    standardise: bool = Field(default=False, description="Preprocessing: per-image colour standardisation.")
    vignette: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Preprocessing: outside a centred ellipse of this half-width (share of the width) fade to "
        "grey; 0 = off.",
    )
    epochs: int = Field(default=10, ge=1)
    p: int = Field(default=16, ge=2, description="Identities per batch.")
    k: int = Field(default=4, ge=2, description="Photos per identity in a batch.")
    grad_accum: int = Field(default=1, ge=1, description="Batches per optimiser step.")
    lr: float = Field(default=1e-3, gt=0, description="Learning rate of the head.")
    tower_lr: float | None = Field(default=None, gt=0, description="Tower/adapters; None: by mode.")
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1, description="Share of warm-up steps.")
    clip_grad_norm: float = Field(default=1.0, ge=0, description="0 turns clipping off.")
    losses: list[LossName] = Field(default_factory=lambda: list[LossName](["supcon"]), min_length=1)
    loss_weights: list[float] | None = None
    margin: float = Field(default=0.2, ge=0, description="Triplet margin (cosine distance).")
    temperature: float = Field(default=0.1, gt=0, description="SupCon / proxy softmax temperature.")
    proxy_lr: float = Field(default=1e-2, gt=0, description="Learning rate of the proxy loss's proxies.")
    distance: Literal["cosine", "euclidean"] = "cosine"
    augment: AugmentSettings = Field(default_factory=AugmentSettings)
    augment_backend: Literal["pillow", "tensor"] = Field(
        default="pillow",
        description="pillow: augment each decoded photo, then Qwen's processor, per step; tensor: face crops "
        "cached once, augmented and patchified in torch (tower modes with face_crop > 0; training.tensor_augment).",
    )
    cache_views: int = Field(default=8, ge=1, description="head mode: augmented views cached per photo.")
    work_pixels: int = Field(
        default=4, ge=1, description="Photos are shrunk to <= this x pixel_budget before augmenting."
    )
    cache_megapixels: int = Field(
        default=100, ge=0, description="Decoded, shrunk training photos kept in memory (per worker), Mpx."
    )
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    val_identities: int | None = Field(default=None, ge=2)
    min_train_photos: int = Field(
        default=1, ge=1, description="Training identities with fewer photos are left out (they still validate)."
    )
    seed: int = 0
    patience: int = Field(default=3, ge=1, description="Epochs without a better MAP@R before stopping.")
    select_from: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Epochs before this share of the run are scored and logged but cannot become the best "
        "(nor count towards patience); the untrained epoch 0 always can. 0 = every epoch.",
    )
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(default="auto", description="auto: bf16 on GPU")
    activation_checkpointing: bool = Field(default=True, description="On GPU, when tower weights train.")
    workers: int = Field(default=0, ge=0, description="DataLoader worker processes.")
    eval_batch_size: int = Field(default=32, ge=1)
    checkpoint_every: int = Field(default=0, ge=0, description="Resume point every N steps; 0 = off.")

    @model_validator(mode="after")
    def _check(self) -> TrainSettings:
        if self.loss_weights is not None and len(self.loss_weights) != len(self.losses):
            raise ValueError(f"{len(self.losses)} losses but {len(self.loss_weights)} loss_weights")
        if self.augment_backend == "tensor":
            if self.mode == "head" or self.face_crop <= 0:
                raise ValueError("augment_backend 'tensor' is for tower modes with face_crop > 0")
            if self.augment.hue > 0 or self.augment.jpeg_p > 0:
                raise ValueError("augment_backend 'tensor' has no hue shift or JPEG: set augment.hue and jpeg_p to 0")
        return self

    def resolved_tower_lr(self) -> float:
        return self.tower_lr if self.tower_lr is not None else DEFAULT_TOWER_LR.get(self.mode, 0.0)


class TrainResult(BaseModel):
    """What a run produced."""

    out_dir: Path
    encoder_id: str
    best_epoch: int
    best_metrics: dict[str, float]
    untrained_metrics: dict[str, float]
    epochs_run: int
    steps: int
    stopped_early: bool
    seconds: float
