"""Metric-learning training of the photo encoder: settings, data pipeline, loop, validation, resume, export.

Modes, cheapest first (``TrainSettings.mode``):

- ``head``: the tower is frozen; each training photo's pooled tower features are computed once for a few
  augmented views and cached, and only the projection head trains on them (a strong baseline in minutes);
- ``last_blocks``: the last ``unfreeze_blocks`` tower blocks and the merger train with the head;
- ``lora``: LoRA adapters (peft) on the blocks' attention and MLP linears train with the head;
- ``full``: everything trains, at a low learning rate.

Every epoch, the held-out identities are embedded and scored (recall@k, MAP@R, mean same/different-person
cosine distance); the best epoch by MAP@R is kept, training stops early after ``patience`` epochs without
improvement, and the best weights are exported with :func:`training.encoder.save_encoder` into the output
folder, which :func:`training.encoder.load_encoder` then reads as is.

Output folder layout: ``encoder_card.json``, ``tower/``, ``head.safetensors``, ``preprocessor_config.json``
(the export, written at the end), ``metrics.jsonl`` (one JSON line per epoch, epoch 0 = untrained),
``checkpoints/last.pt`` and ``checkpoints/best.pt`` (resume state), ``run.json`` (settings and data of the
run), ``cache/`` (head mode's cached features).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.errors import InvalidInput
from training.augment import Augment, AugmentSettings, item_rng
from training.data import Photo, PhotoDataset, check_disjoint, load_image, read_dataset, split_by_identity
from training.losses import CombinedLoss, build_loss
from training.samplers import PKBatchSampler

if TYPE_CHECKING:
    from training.encoder import Encoder

log = logging.getLogger(__name__)

Mode = Literal["head", "last_blocks", "lora", "full"]
LossName = Literal["supcon", "triplet"]
CHECKPOINT_FORMAT = 1
# The "epoch" coordinate of head mode's cached views: apart from every real epoch's augmentation stream.
CACHE_STREAM = 2**31 - 1
# Only the blocks' linears: the merger's layers are also called linear_fc1/2, and LoRA there is not wanted.
LORA_TARGETS = {
    "attn": r"blocks\.\d+\.attn\.(qkv|proj)",
    "attn_mlp": r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.linear_fc[12])",
}
DEFAULT_TOWER_LR: dict[str, float] = {"last_blocks": 2e-5, "lora": 1e-4, "full": 1e-5}
# Settings that may change between an interrupted run and its resumption (they do not change the batches).
RESUMABLE_CHANGES = frozenset({"epochs", "patience", "workers", "eval_batch_size", "checkpoint_every"})


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
    temperature: float = Field(default=0.1, gt=0, description="SupCon temperature.")
    distance: Literal["cosine", "euclidean"] = "cosine"
    augment: AugmentSettings = Field(default_factory=AugmentSettings)
    cache_views: int = Field(default=8, ge=1, description="head mode: augmented views cached per photo.")
    work_pixels: int = Field(
        default=4, ge=1, description="Photos are shrunk to <= this x pixel_budget before augmenting."
    )
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    val_identities: int | None = Field(default=None, ge=2)
    seed: int = 0
    patience: int = Field(default=3, ge=1, description="Epochs without a better MAP@R before stopping.")
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


@dataclass
class _State:
    """Where the run stands; saved in checkpoints."""

    epoch: int = 0  # the epoch being (or to be) run, 0-based
    batch: int = 0  # next batch of that epoch
    step: int = 0  # optimiser steps done
    loss_sum: float = 0.0  # of the current epoch's finished batches (a resumed epoch keeps its average)
    loss_batches: int = 0
    best_map: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    untrained: dict[str, float] = field(default_factory=dict)
    best_metrics: dict[str, float] = field(default_factory=dict)
    finished: bool = False
    stopped_early: bool = False


class Interrupted(Exception):
    """Raised by a run stopped by ``stop_after_steps`` (after its resume point was saved)."""


# -- data ---------------------------------------------------------------------------------------------------
def prepare_data(
    data: Sequence[Path], val_data: Sequence[Path], settings: TrainSettings
) -> tuple[list[Photo], list[Photo]]:
    """Read the training sources (and validation sources, if any) and split them by identity.

    Without ``val_data`` the training photos are split with ``val_fraction`` / ``val_identities``.

    Raises:
        InvalidInput: unreadable data, or a person in both sets.
    """
    if not data:
        raise InvalidInput("no training data given")
    photos = sorted({p for source in data for p in read_dataset(Path(source))})
    if val_data:
        train = photos
        val = sorted({p for source in val_data for p in read_dataset(Path(source))})
    else:
        train, val = split_by_identity(
            photos, val_fraction=settings.val_fraction, val_identities=settings.val_identities,
            seed=settings.seed,
        )
    check_disjoint(train, val)
    return train, val


def shrink(img: Image.Image, max_pixels: int) -> Image.Image:
    """Downscale (keeping the aspect) to at most ``max_pixels``; the tower sees far fewer pixels anyway."""
    w, h = img.size
    if w * h <= max_pixels:
        return img
    s = math.sqrt(max_pixels / (w * h))
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)


class AugmentedPhotos(torch.utils.data.Dataset):
    """Item ``(epoch, batch, position, index)`` -> (augmented image, label); the key seeds the augmentation.

    Keyed by position in the batch rather than by photo, so a photo repeated within a batch (a person with
    fewer than K photos) gets a different view each time.
    """

    def __init__(self, dataset: PhotoDataset, augment: Augment, seed: int, max_pixels: int) -> None:
        self.dataset, self.augment, self.seed, self.max_pixels = dataset, augment, seed, max_pixels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int, int]) -> tuple[Image.Image, int]:  # type: ignore[override]
        epoch, batch, position, index = key
        img = shrink(load_image(self.dataset.photos[index].path), self.max_pixels)
        # One stream per (epoch, batch, position): the same under resume and under any worker count.
        rng = item_rng(self.seed, epoch, batch, position)
        return self.augment(img, rng), int(self.dataset.labels[index])


class _KeyedBatches:
    """The sampler's batches of one epoch as keys for :class:`AugmentedPhotos`, from batch ``start`` on."""

    def __init__(self, sampler: PKBatchSampler, epoch: int, start: int) -> None:
        self.sampler, self.epoch, self.start = sampler, epoch, start

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        self.sampler.set_epoch(self.epoch)
        for b, batch in enumerate(self.sampler):
            if b >= self.start:
                yield [(self.epoch, b, pos, i) for pos, i in enumerate(batch)]


class _Collate:
    """Images -> the tower's inputs (runs in the DataLoader workers, so preprocessing overlaps training)."""

    def __init__(self, encoder: Encoder) -> None:
        self.preprocess = encoder.preprocess

    def __call__(
        self, items: list[tuple[Image.Image, int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pixel_values, grid = self.preprocess([img for img, _ in items])
        return pixel_values, grid, torch.tensor([label for _, label in items], dtype=torch.int64)


# -- model --------------------------------------------------------------------------------------------------
def _tower_dtype(settings: TrainSettings, device: torch.device) -> torch.dtype:
    if device.type != "cuda" or settings.precision == "fp32":
        return torch.float32
    # Frozen or adapter-only towers can hold bf16 weights; trained weights stay fp32 (master copy) under
    # bf16 autocast.
    return torch.bfloat16 if settings.mode in ("head", "lora") else torch.float32


def _use_autocast(settings: TrainSettings, device: torch.device) -> bool:
    return device.type == "cuda" and settings.precision != "fp32"


def build_model(base: str | Encoder, settings: TrainSettings) -> tuple[Encoder, list[dict[str, Any]]]:
    """Load the base encoder (or take one built in memory), give it a fresh seeded head, mark what trains.

    Returns the encoder and the optimiser's parameter groups (head; tower or adapters when they train).
    """
    from training.encoder import ProjectionHead, load_encoder, resolve_device

    if isinstance(base, str):
        device = resolve_device(settings.device)
        encoder = load_encoder(
            base, device=device, dtype=_tower_dtype(settings, device), pixel_budget=settings.pixel_budget,
            dim=settings.dim,
        )
    else:
        encoder, device = base, base.device
    in_dim = int(encoder.tower.config.out_hidden_size)
    # Same seed as load_encoder's head, so epoch 0 of a linear head scores exactly the untrained encoder.
    encoder.head = ProjectionHead.seeded(in_dim, settings.dim, hidden_dim=settings.head_hidden).to(device)
    encoder.dim = settings.dim
    tower = encoder.tower
    for p in tower.parameters():
        p.requires_grad_(False)
    if settings.mode == "last_blocks":
        n = min(settings.unfreeze_blocks, len(tower.blocks))
        for module in [*tower.blocks[-n:], tower.merger]:
            for p in module.parameters():
                p.requires_grad_(True)
    elif settings.mode == "full":
        for name, p in tower.named_parameters():
            # The deepstack mergers feed only the language model, never the pooled features.
            p.requires_grad_(not name.startswith("deepstack_merger_list"))
    elif settings.mode == "lora":
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:  # pragma: no cover - peft is in the train extra
            raise InvalidInput("mode 'lora' needs peft: pip install 'profile-matcher[train]'") from exc
        config = LoraConfig(
            r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
            target_modules=LORA_TARGETS[settings.lora_targets], bias="none",
        )
        encoder.tower = get_peft_model(tower, config)
    trainable = [p for p in encoder.tower.parameters() if p.requires_grad]
    if settings.activation_checkpointing and device.type == "cuda" and trainable:
        base_tower = encoder.tower.get_base_model() if settings.mode == "lora" else encoder.tower
        base_tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    groups: list[dict[str, Any]] = [
        {"params": list(encoder.head.parameters()), "lr": settings.lr, "name": "head"}
    ]
    if trainable:
        groups.append({"params": trainable, "lr": settings.resolved_tower_lr(), "name": "tower"})
    n_train = sum(p.numel() for g in groups for p in g["params"])
    log.info("mode %s: %d trainable parameters (%d in the tower)", settings.mode, n_train,
             sum(p.numel() for p in trainable))
    return encoder, groups


def warmup_cosine(total_steps: int, warmup_fraction: float) -> Any:
    """LambdaLR factor: linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 0."""
    warmup = int(round(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def batch_loss(
    encoder: Encoder, batch: tuple[torch.Tensor, ...], loss_fn: torch.nn.Module, *, autocast: bool
) -> torch.Tensor:
    """The loss of one batch, with grad: ``(features (B, hidden), labels)`` through the head alone (cached
    features), or ``(pixel_values, image_grid_thw, labels)`` through the whole encoder. bf16 autocast on GPU
    when ``autocast``; the loss itself is computed in float32."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        if len(batch) == 2:
            feats, labels = batch
            emb = F.normalize(encoder.head(feats.to(encoder.device)).float(), dim=-1)
        else:
            pixel_values, grid, labels = batch
            emb = encoder(pixel_values, grid).float()
    return loss_fn(emb, labels.to(encoder.device))


# -- checkpoints --------------------------------------------------------------------------------------------
def _trainable_state(encoder: Encoder) -> dict[str, Any]:
    tower = {n: p.detach().to("cpu").clone() for n, p in encoder.tower.named_parameters() if p.requires_grad}
    head = {n: t.detach().to("cpu").clone() for n, t in encoder.head.state_dict().items()}
    return {"tower": tower, "head": head}


def _load_trainable_state(encoder: Encoder, state: dict[str, Any]) -> None:
    encoder.head.load_state_dict(state["head"])
    params = dict(encoder.tower.named_parameters())
    missing = sorted(set(state["tower"]) - set(params))
    if missing:
        raise InvalidInput(f"checkpoint holds tower weights this model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, value in state["tower"].items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint behind


def _run_record(
    base: str, settings: TrainSettings, train: Sequence[Photo], val: Sequence[Photo]
) -> dict[str, Any]:
    def digest(photos: Sequence[Photo]) -> str:
        h = hashlib.blake2b(digest_size=8)
        for p in photos:
            h.update(f"{p.identity}\0{p.path}\n".encode())
        return h.hexdigest()

    return {
        "base": base,
        "settings": settings.model_dump(mode="json"),
        "train_photos": digest(train),
        "val_photos": digest(val),
    }


def _check_resumable(old: dict[str, Any], new: dict[str, Any], out: Path) -> None:
    changed = [k for k in ("base", "train_photos", "val_photos") if old.get(k) != new.get(k)]
    old_s, new_s = old.get("settings", {}), new["settings"]
    changed += [f"settings.{k}" for k in sorted(set(old_s) | set(new_s))
                if k not in RESUMABLE_CHANGES and old_s.get(k) != new_s.get(k)]
    if changed:
        raise InvalidInput(
            f"{out} holds an interrupted run with other {', '.join(changed)}; resume it with the same "
            "settings and data, or train into another --out (or pass --no-resume to start over)"
        )


# -- evaluation -------------------------------------------------------------------------------------------
def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    from training.metrics import scalar_metrics

    return {k: (v if isinstance(v, int) else float(v)) for k, v in scalar_metrics(metrics).items()}


def _evaluate(emb: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from training.metrics import retrieval_metrics

    return _scalars(retrieval_metrics(emb, labels, ks=(1, 5)))


def _embed_photos(encoder: Encoder, photos: Sequence[Photo], batch_size: int) -> np.ndarray:
    """Validation embeddings through the encoder's own ``embed`` (eval mode, full-size files)."""
    chunks = [
        encoder.embed([load_image(p.path) for p in photos[i : i + batch_size]], batch_size=batch_size)
        for i in range(0, len(photos), batch_size)
    ]
    return np.concatenate(chunks)


@torch.no_grad()
def _pool_images(encoder: Encoder, images: Sequence[Image.Image], autocast: bool) -> torch.Tensor:
    pixel_values, grid = encoder.preprocess(images)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        return encoder.pool(pixel_values, grid).float().cpu()


def _cache_features(
    encoder: Encoder, train: PhotoDataset, val: PhotoDataset, settings: TrainSettings, cache: Path,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head mode: pooled features of ``cache_views`` augmented views per training photo ``(n, V, hidden)``
    and of each validation photo as is ``(m, hidden)``; float32 on CPU, saved in ``cache`` for a resume."""
    from tqdm import tqdm

    key = hashlib.blake2b(
        json.dumps([encoder.encoder_id, settings.augment.model_dump(mode="json"), settings.cache_views,
                    settings.seed, settings.work_pixels, [str(p.path) for p in train.photos],
                    [str(p.path) for p in val.photos]]).encode(), digest_size=8,
    ).hexdigest()
    path = cache / f"features-{key}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu")
        return saved["train"], saved["val"]
    autocast = _use_autocast(settings, encoder.device)
    augment = Augment(settings.augment)
    max_pixels = settings.work_pixels * settings.pixel_budget
    bs = settings.eval_batch_size
    encoder.eval()
    val_feats = torch.cat([
        _pool_images(encoder, [load_image(p.path) for p in val.photos[i : i + bs]], autocast)
        for i in range(0, len(val), bs)
    ])
    train_feats: list[torch.Tensor] = []
    for i in tqdm(range(0, len(train), bs), desc="caching features", unit="batch", disable=not progress):
        photos = train.photos[i : i + bs]
        images = [shrink(load_image(p.path), max_pixels) for p in photos]
        views = [augment(img, item_rng(settings.seed, CACHE_STREAM, i + j, v))
                 for v in range(settings.cache_views) for j, img in enumerate(images)]
        feats = _pool_images(encoder, views, autocast)  # (V * b, hidden), view-major
        train_feats.append(feats.view(settings.cache_views, len(photos), -1).transpose(0, 1))
    out = torch.cat(train_feats).contiguous(), val_feats
    _save_atomic({"train": out[0], "val": out[1]}, path)
    return out


# -- the loop -----------------------------------------------------------------------------------------------
def train(
    data: Sequence[Path],
    out_dir: Path,
    *,
    base: str,
    settings: TrainSettings | None = None,
    val_data: Sequence[Path] = (),
    resume: bool = True,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> TrainResult:
    """Train the encoder on ``data`` and export the best epoch into ``out_dir``.

    Args:
        data: training sources (folders in any layout :func:`training.data.read_dataset` reads).
        out_dir: output folder (see the module docstring); created if missing.
        base: what :func:`training.encoder.load_encoder` loads as the starting point.
        val_data: validation sources; without them, the training data is split by identity.
        resume: continue from ``out_dir/checkpoints/last.pt`` when it exists.
        stop_after_steps: stop (raising :class:`Interrupted`) after this many optimiser steps of this call,
            with a resume point saved: a time-boxed job, and how tests interrupt a run.

    Raises:
        InvalidInput: bad data or settings, or a resume with other settings or data.
        Interrupted: ``stop_after_steps`` was reached.
    """
    from tqdm import tqdm

    from training.encoder import save_encoder

    settings = settings or TrainSettings()
    started = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_photos, val_photos = prepare_data(data, val_data, settings)
    train_ds, val_ds = PhotoDataset(train_photos), PhotoDataset(val_photos)
    if len(train_ds.identities) < settings.p:
        raise InvalidInput(
            f"p={settings.p} identities per batch, but training has {len(train_ds.identities)} identities"
        )
    record = _run_record(base, settings, train_photos, val_photos)
    ckpt_dir = out / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    run_path = out / "run.json"
    resuming = resume and last_path.is_file()
    if resuming:
        _check_resumable(json.loads(run_path.read_text()), record, out)
    elif (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()  # a fresh run: the old log would mix two runs
    run_path.write_text(json.dumps(record, indent=2) + "\n")

    torch.manual_seed(settings.seed)
    encoder, groups = build_model(base, settings)
    device = encoder.device
    autocast = _use_autocast(settings, device)
    loss_fn: CombinedLoss = build_loss(
        settings.losses, margin=settings.margin, temperature=settings.temperature, distance=settings.distance,
        weights=settings.loss_weights,
    )
    sampler = PKBatchSampler(train_ds.labels, p=settings.p, k=settings.k, seed=settings.seed)
    steps_per_epoch = math.ceil(len(sampler) / settings.grad_accum)
    total_steps = steps_per_epoch * settings.epochs
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    # The schedule is fixed by the epochs asked for; extending a run on resume stretches its tail.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, settings.warmup_fraction)
    )

    head_mode = settings.mode == "head"
    train_feats = val_feats = None
    if head_mode:
        train_feats, val_feats = _cache_features(encoder, train_ds, val_ds, settings, out / "cache", progress)
    else:
        loader_ds = AugmentedPhotos(train_ds, Augment(settings.augment), settings.seed,
                                    settings.work_pixels * settings.pixel_budget)
        collate = _Collate(encoder)

    def evaluate() -> dict[str, float]:
        encoder.eval()
        if val_feats is not None:
            with torch.no_grad():
                emb = F.normalize(encoder.head(val_feats.to(device)), dim=-1).cpu().numpy()
        else:
            emb = _embed_photos(encoder, val_photos, settings.eval_batch_size)
        return _evaluate(emb, val_ds.labels)

    state = _State()
    if resuming:
        ckpt = torch.load(last_path, map_location="cpu", weights_only=False)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise InvalidInput(
                f"{last_path}: checkpoint format {ckpt.get('format')} is not {CHECKPOINT_FORMAT}"
            )
        _load_trainable_state(encoder, ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        state = _State(**ckpt["state"])
        log.info("resuming %s at epoch %d, batch %d, step %d", out, state.epoch + 1, state.batch, state.step)
    metrics_log = (out / "metrics.jsonl").open("a", encoding="utf-8")

    def log_line(entry: dict[str, Any]) -> None:
        metrics_log.write(json.dumps(entry, sort_keys=True) + "\n")
        metrics_log.flush()

    def checkpoint(path: Path) -> None:
        _save_atomic({"format": CHECKPOINT_FORMAT, "model": _trainable_state(encoder),
                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                      "torch_rng": torch.get_rng_state(), "state": state.__dict__}, path)

    micro, pending = 0, 0.0  # batches (and their loss) accumulated since the last optimiser step
    try:
        if not state.untrained:
            state.untrained = evaluate()
            # The untrained weights are the first candidate: an epoch must beat them to be exported.
            state.best_metrics, state.best_map = dict(state.untrained), state.untrained["map@r"]
            checkpoint(best_path)
            log_line({"epoch": 0, "step": 0, "val": state.untrained})
            log.info("untrained: %s", _brief(state.untrained))
        steps_this_call = 0
        while state.epoch < settings.epochs and not state.finished:
            epoch = state.epoch
            epoch_start = time.monotonic()
            if head_mode:
                assert train_feats is not None  # set in head mode; for mypy
                batches: Any = _feature_batches(sampler, epoch, state.batch, train_feats, train_ds.labels,
                                                settings.seed)
            else:
                batches = torch.utils.data.DataLoader(
                    loader_ds, batch_sampler=_KeyedBatches(sampler, epoch, state.batch), collate_fn=collate,
                    num_workers=settings.workers, persistent_workers=False,
                )
            encoder.train()
            if head_mode or settings.mode == "lora":
                encoder.tower.eval()  # frozen base: no dropout noise in the features
            if state.batch == 0:
                state.loss_sum, state.loss_batches = 0.0, 0
            bar = tqdm(batches, total=len(sampler), initial=state.batch, unit="batch",
                       desc=f"epoch {epoch + 1}/{settings.epochs}", disable=not progress)
            optimizer.zero_grad(set_to_none=True)
            micro, pending = 0, 0.0
            for batch in bar:
                loss = batch_loss(encoder, batch, loss_fn, autocast=autocast)
                (loss / settings.grad_accum).backward()
                micro += 1
                state.batch += 1
                value = float(loss.detach())
                pending += value
                state.loss_sum += value
                state.loss_batches += 1
                bar.set_postfix(loss=f"{value:.4f}")
                if micro % settings.grad_accum == 0 or state.batch == len(sampler):
                    if settings.clip_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(
                            [p for g in groups for p in g["params"]], settings.clip_grad_norm
                        )
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    state.step += 1
                    steps_this_call += 1
                    micro, pending = 0, 0.0
                    if settings.checkpoint_every and state.step % settings.checkpoint_every == 0:
                        checkpoint(last_path)
                    if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                        checkpoint(last_path)
                        raise Interrupted(f"stopped after {steps_this_call} steps at step {state.step}")
            val = evaluate()
            bar.set_postfix(loss=f"{state.loss_sum / max(1, state.loss_batches):.4f}",
                            r1=f"{val['recall@1']:.3f}", map_r=f"{val['map@r']:.3f}")
            bar.close()
            improved = val["map@r"] > state.best_map
            if improved:
                state.best_map, state.best_epoch, state.bad_epochs = val["map@r"], epoch + 1, 0
                state.best_metrics = val
                checkpoint(best_path)
            else:
                state.bad_epochs += 1
            log_line({
                "epoch": epoch + 1, "step": state.step, "train_loss": state.loss_sum / max(1, state.loss_batches),
                "loss_parts": loss_fn.last_parts, "lr": [g["lr"] for g in optimizer.param_groups],
                "seconds": round(time.monotonic() - epoch_start, 3), "val": val, "best": improved,
            })
            log.info("epoch %d/%d: loss %.4f, %s%s", epoch + 1, settings.epochs,
                     state.loss_sum / max(1, state.loss_batches), _brief(val), " (best)" if improved else "")
            state.epoch, state.batch = epoch + 1, 0
            if state.bad_epochs >= settings.patience:
                log.info("no better MAP@R for %d epochs: stopping early", settings.patience)
                state.finished = state.stopped_early = True
            checkpoint(last_path)
    except KeyboardInterrupt:
        # Keep a resume point at the last optimiser step (batches accumulated since are redone on resume),
        # then let the CLI report the interruption.
        state.batch -= micro
        state.loss_sum -= pending
        state.loss_batches -= micro
        checkpoint(last_path)
        raise
    finally:
        metrics_log.close()

    state.finished = True
    checkpoint(last_path)
    if best_path.is_file():
        _load_trainable_state(encoder, torch.load(best_path, map_location="cpu", weights_only=False)["model"])
    encoder.eval()
    card = {
        "trained": True,
        "train_settings": settings.model_dump(mode="json"),
        "data": {"train": train_ds.counts(), "val": val_ds.counts(),
                 "sources": [str(Path(s)) for s in data], "val_sources": [str(Path(s)) for s in val_data]},
        "validation": {"best_epoch": state.best_epoch, **state.best_metrics},
        "untrained_validation": state.untrained,
        "epochs_run": state.epoch,
        "steps": state.step,
        "stopped_early": state.stopped_early,
    }
    save_encoder(encoder, out, card)
    result = TrainResult(
        out_dir=out, encoder_id=encoder.encoder_id, best_epoch=state.best_epoch,
        best_metrics=state.best_metrics, untrained_metrics=state.untrained, epochs_run=state.epoch,
        steps=state.step, stopped_early=state.stopped_early, seconds=round(time.monotonic() - started, 3),
    )
    log.info("exported %s (encoder %s): %s", out, encoder.encoder_id, _brief(state.best_metrics))
    return result


def _feature_batches(
    sampler: PKBatchSampler, epoch: int, start: int, feats: torch.Tensor, labels: np.ndarray, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Head mode: (features (P*K, hidden), labels (P*K,)) per batch from batch ``start`` on.

    Each item is one of its photo's cached views ``feats`` (n, V, hidden), drawn from a stream seeded by
    (seed, epoch, batch), so a resumed epoch replays the same batches.
    """
    sampler.set_epoch(epoch)
    for b, batch in enumerate(sampler):
        if b < start:
            continue
        n_views = feats.shape[1]
        views = np.random.default_rng([seed, epoch, b, 1]).integers(0, n_views, size=len(batch))
        # A photo repeated in the batch (its person has fewer than K) takes its next view each time, so the
        # repeat is another augmentation rather than the identical feature vector.
        first: dict[int, tuple[int, int]] = {}  # photo -> (its first view, repeats so far)
        for j, i in enumerate(batch):
            if i in first:
                view, repeats = first[i]
                first[i] = (view, repeats + 1)
                views[j] = (view + repeats + 1) % n_views
            else:
                first[i] = (int(views[j]), 0)
        index = torch.as_tensor(batch)
        yield feats[index, torch.as_tensor(views)], torch.as_tensor(labels[batch])


def _brief(metrics: dict[str, float]) -> str:
    keys = ("recall@1", "recall@5", "map@r", "mean_same_dist", "mean_diff_dist")
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics)
