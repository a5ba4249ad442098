"""What trains in each mode, at what precision: the model with its parameter groups, the learning-rate
schedule, and one batch's loss.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from engine.errors import InvalidInput
from training.settings import TrainSettings

if TYPE_CHECKING:
    from training.encoder import Encoder

log = logging.getLogger(__name__)

# Only the blocks' linears: the merger's layers are also called linear_fc1/2, and LoRA there is not wanted.
LORA_TARGETS = {
    "attn": r"blocks\.\d+\.attn\.(qkv|proj)",
    "attn_mlp": r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.linear_fc[12])",
}


def _tower_dtype(settings: TrainSettings, device: torch.device) -> torch.dtype:
    if device.type != "cuda" or settings.precision == "fp32":
        return torch.float32
    # Frozen or adapter-only towers can hold bf16 weights; trained weights stay fp32 (master copy) under
    # bf16 autocast.
    return torch.bfloat16 if settings.mode in ("head", "lora") else torch.float32


def use_autocast(settings: TrainSettings, device: torch.device) -> bool:
    return device.type == "cuda" and settings.precision != "fp32"


def build_model(base: str | Encoder, settings: TrainSettings) -> tuple[Encoder, list[dict[str, Any]]]:
    """Load the base encoder (or take one built in memory), give it a fresh seeded head, mark what trains.

    Returns the encoder and the optimiser's parameter groups (head; tower or adapters when they train).
    """
    from training.encoder import ProjectionHead, load_encoder, resolve_device

    if isinstance(base, str):
        device = resolve_device(settings.device)
        encoder = load_encoder(
            base,
            device=device,
            dtype=_tower_dtype(settings, device),
            pixel_budget=settings.pixel_budget,
            dim=settings.dim,
        )
    else:
        encoder, device = base, base.device
    # Preprocessing is part of the encoder (and its export), so serving sees photos exactly as training did.
    encoder.face_crop, encoder.standardise = settings.face_crop, settings.standardise
    encoder.vignette = settings.vignette
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
            r=settings.lora_rank,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=LORA_TARGETS[settings.lora_targets],
            bias="none",
        )
        encoder.tower = get_peft_model(tower, config)
    trainable = [p for p in encoder.tower.parameters() if p.requires_grad]
    if settings.activation_checkpointing and device.type == "cuda" and trainable:
        base_tower = encoder.tower.get_base_model() if settings.mode == "lora" else encoder.tower
        base_tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    groups: list[dict[str, Any]] = [{"params": list(encoder.head.parameters()), "lr": settings.lr, "name": "head"}]
    if trainable:
        groups.append({"params": trainable, "lr": settings.resolved_tower_lr(), "name": "tower"})
    n_train = sum(p.numel() for g in groups for p in g["params"])
    log.info(
        "mode %s: %d trainable parameters (%d in the tower)", settings.mode, n_train, sum(p.numel() for p in trainable)
    )
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
