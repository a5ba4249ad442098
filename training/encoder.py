"""Loading and exporting the photo encoder (Qwen3-VL vision tower, mean-pooled, projection head to ``dim``).

``load_encoder`` reads three kinds of source:

- a hub id (``Qwen/Qwen3-VL-2B-Instruct``), through ``from_pretrained`` (needs the hub or a filled cache);
- a local directory holding a full Qwen3-VL checkpoint (``Qwen3VLForConditionalGeneration`` layout, whose
  vision weights are stored under ``model.visual.``), or a bare vision tower;
- a directory written by ``save_encoder`` (tower + head + preprocessing settings + ``encoder_card.json``).

Only the vision tower is loaded. Images go through Qwen's own image processor (PIL backend, so results do
not depend on whether torchvision is installed) with a pinned pixel budget; the processor's default would
allow 16.7 M pixels (65,536 tokens) per image.

This module loads and exports; the module itself is :class:`training.model.Encoder` (re-exported here).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from engine.errors import EncoderMismatch, EncoderUnavailable, InvalidInput
from training.images import to_rgb
from training.model import HEAD_SEED, Encoder, ProjectionHead
from training.qwen3_vl import (
    CARD_NAME,
    _check_fp8,
    _dtype_name,
    _load_processor,
    _load_tower,
    _read_json,
    _tower_path_and_config,
    resolve_device,
    resolve_dtype,
)

if TYPE_CHECKING:
    from transformers import Qwen3VLVisionModel
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from engine.settings import EncoderSettings

__all__ = [
    "CARD_NAME",
    "HEAD_SEED",
    "Encoder",
    "ProjectionHead",
    "build_encoder",
    "load_encoder",
    "load_encoder_from_settings",
    "resolve_device",
    "resolve_dtype",
    "save_encoder",
    "to_rgb",
]

log = logging.getLogger(__name__)

DEFAULT_PIXEL_BUDGET = 448 * 448
DEFAULT_DIM = 512
HEAD_WEIGHTS = "head.safetensors"
TOWER_DIR = "tower"
PREPROCESSOR_NAME = "preprocessor_config.json"
CARD_FORMAT = 1


def load_encoder(
    source: str | Path,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    pixel_budget: int | None = None,
    dim: int | None = None,
) -> Encoder:
    """Load the encoder from a hub id, a full Qwen3-VL checkpoint directory, or a ``save_encoder`` export.

    ``pixel_budget``: max pixels per image fed to the tower (``None``: the export's own, else 448*448).
    ``dim``: output dimension (``None``: the export's own, else 512); a base checkpoint gets a head drawn
    from a fixed seed. Returns an ``Encoder`` in eval mode on ``device``.

    Raises ``EncoderUnavailable`` (not found, offline, FP8 without a suitable GPU, missing weights),
    ``EncoderMismatch`` (``dim`` differs from an export's trained head), ``InvalidInput`` (bad arguments).
    """
    source_str = str(source)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if pixel_budget is not None and pixel_budget < 32 * 32:
        raise InvalidInput(f"pixel_budget must be >= {32 * 32} (one merged token), got {pixel_budget}")
    if dim is not None and dim < 1:
        raise InvalidInput(f"dim must be >= 1, got {dim}")
    path = Path(source_str).expanduser()
    if path.is_dir() and (path / CARD_NAME).is_file():
        encoder = _load_export(path, dev, torch_dtype, pixel_budget, dim)
    else:
        encoder = _load_base(source_str, dev, torch_dtype, pixel_budget, dim)
    log.info(
        "encoder %s from %s: dim %d, %s on %s, pixel budget %d",
        encoder.encoder_id,
        source_str,
        encoder.dim,
        torch_dtype,
        dev,
        encoder.pixel_budget,
    )
    return encoder


def load_encoder_from_settings(settings: EncoderSettings, source: str | Path | None = None) -> Encoder:
    """``load_encoder`` with ``MATCHER_ENCODER__*`` settings.

    ``pixel_budget`` and ``dim`` are passed only when they were set explicitly (environment or constructor),
    so an export's own trained dim and budget win over the settings' defaults.
    """
    explicit = settings.model_fields_set
    return load_encoder(
        source if source is not None else settings.source,
        device=settings.device,
        dtype=settings.dtype,
        pixel_budget=settings.pixel_budget if "pixel_budget" in explicit else None,
        dim=settings.dim if "dim" in explicit else None,
    )


def build_encoder(
    tower: Qwen3VLVisionModel,
    *,
    pixel_budget: int = DEFAULT_PIXEL_BUDGET,
    dim: int = DEFAULT_DIM,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    source: str = "in-memory",
) -> Encoder:
    """An ``Encoder`` around a tower built in memory (benchmarks, training a tower from scratch).

    The image processor gets Qwen3-VL's values for the tower's patching; the head comes from the fixed seed.
    """
    if pixel_budget < 32 * 32:
        raise InvalidInput(f"pixel_budget must be >= {32 * 32} (one merged token), got {pixel_budget}")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    processor, min_pixels = _load_processor(None, tower, pixel_budget)
    head = ProjectionHead.seeded(int(tower.config.out_hidden_size), dim)
    return _assemble(
        tower,
        head,
        processor,
        source=source,
        base_model=source,
        pixel_budget=pixel_budget,
        min_pixels=min_pixels,
        dev=dev,
        dtype=torch_dtype,
    )


def _load_base(
    source: str, dev: torch.device, dtype: torch.dtype, pixel_budget: int | None, dim: int | None
) -> Encoder:
    _check_fp8(source, None, dev)  # by name, before any download or hub check
    path, config, is_local = _tower_path_and_config(source)  # at most one quick hub request
    _check_fp8(source, config, dev)  # by config, before transformers fails deep inside
    tower = _load_tower(path, dtype, dev)
    budget = pixel_budget or DEFAULT_PIXEL_BUDGET
    processor, min_pixels = _load_processor(path, tower, budget)
    head = ProjectionHead.seeded(int(tower.config.out_hidden_size), dim or DEFAULT_DIM)
    base = str(Path(path).resolve()) if is_local else source
    return _assemble(
        tower,
        head,
        processor,
        source=source,
        base_model=base,
        pixel_budget=budget,
        min_pixels=min_pixels,
        dev=dev,
        dtype=dtype,
    )


def _load_export(
    path: Path, dev: torch.device, dtype: torch.dtype, pixel_budget: int | None, dim: int | None
) -> Encoder:
    from safetensors.torch import load_file

    card = _read_json(path / CARD_NAME)
    head_cfg = card.get("head")
    if not isinstance(head_cfg, dict) or "in_dim" not in head_cfg or "dim" not in head_cfg:
        raise EncoderUnavailable(f"{path / CARD_NAME} has no 'head' settings (in_dim, dim)")
    if dim is not None and dim != int(head_cfg["dim"]):
        raise EncoderMismatch(f"{path} was trained with dim {head_cfg['dim']}, but dim {dim} was asked for")
    base_model = str(card.get("base_model", ""))
    kind = card.get("tower", "full")
    tower_dir = path / TOWER_DIR
    tower_config = tower_dir / "config.json"
    if kind == "full":
        _check_fp8(str(path), _read_json(tower_config) if tower_config.is_file() else None, dev)
        tower = _load_tower(str(tower_dir), dtype, dev)
    elif kind == "lora":
        tower = _load_lora_tower(base_model, tower_dir, dtype, dev)
    else:
        raise EncoderUnavailable(f"{path / CARD_NAME}: unknown tower kind {kind!r} (expected 'full' or 'lora')")
    budget = pixel_budget or int(card.get("pixel_budget") or DEFAULT_PIXEL_BUDGET)
    if pixel_budget is not None and card.get("pixel_budget") and pixel_budget != int(card["pixel_budget"]):
        log.warning(
            "%s was exported with pixel budget %s; using %d (vectors will differ)",
            path,
            card["pixel_budget"],
            pixel_budget,
        )
    processor, min_pixels = _load_processor(str(path), tower, budget)
    head = ProjectionHead(
        int(head_cfg["in_dim"]),
        int(head_cfg["dim"]),
        hidden_dim=int(head_cfg.get("hidden_dim", 0)),
        batch_norm=bool(head_cfg.get("batch_norm", True)),
    )
    try:
        head.load_state_dict(load_file(str(path / HEAD_WEIGHTS)))
    except (OSError, RuntimeError) as exc:
        raise EncoderUnavailable(f"cannot load the projection head from {path / HEAD_WEIGHTS}: {exc}") from exc
    if head.in_dim != int(tower.config.out_hidden_size):
        raise EncoderUnavailable(
            f"{path}: head takes {head.in_dim} features, tower gives {tower.config.out_hidden_size}"
        )
    pre = card.get("preprocessing") or {}
    encoder = _assemble(
        tower,
        head,
        processor,
        source=str(path),
        base_model=base_model or str(path),
        pixel_budget=budget,
        min_pixels=min_pixels,
        dev=dev,
        dtype=dtype,
        face_crop=float(pre.get("face_crop", 0.0)),
        standardise=bool(pre.get("standardise", False)),
        vignette=float(pre.get("vignette", 0.0)),
    )
    saved_id = card.get("encoder_id")
    same_setup = budget == card.get("pixel_budget") and _dtype_name(dtype) == card.get("saved_dtype")
    if saved_id and same_setup and saved_id != encoder.encoder_id:
        log.warning("%s: card says encoder_id %s, weights hash to %s", path, saved_id, encoder.encoder_id)
    return encoder


def _load_lora_tower(
    base_model: str, adapter_dir: Path, dtype: torch.dtype, device: torch.device
) -> Qwen3VLVisionModel:
    """Base tower named in the card + LoRA adapters from ``adapter_dir``, merged for plain inference."""
    if not base_model:
        raise EncoderUnavailable(f"{adapter_dir.parent / CARD_NAME}: a LoRA export must name its 'base_model'")
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise EncoderUnavailable("a LoRA export needs peft (pip install 'profile-matcher[train]')") from exc
    base_path, base_config, _ = _tower_path_and_config(base_model)
    _check_fp8(base_model, base_config, device)
    tower = _load_tower(base_path, dtype)
    try:
        peft_model = PeftModel.from_pretrained(tower, str(adapter_dir))
    except (OSError, ValueError) as exc:
        raise EncoderUnavailable(f"cannot load LoRA adapters from {adapter_dir}: {exc}") from exc
    merged: Any = peft_model.merge_and_unload()
    return merged


def _assemble(
    tower: Qwen3VLVisionModel,
    head: ProjectionHead,
    processor: Qwen2VLImageProcessorPil,
    *,
    source: str,
    base_model: str,
    pixel_budget: int,
    min_pixels: int,
    dev: torch.device,
    dtype: torch.dtype,
    face_crop: float = 0.0,
    standardise: bool = False,
    vignette: float = 0.0,
) -> Encoder:
    movable: Any = tower
    if getattr(tower, "hf_quantizer", None) is None:
        movable.to(device=dev, dtype=dtype)
    else:  # quantized (FP8) weights keep their dtype; transformers refuses a dtype cast
        movable.to(device=dev)
    head.to(device=dev, dtype=torch.float32)  # small; float32 keeps the output precise under a bf16 tower
    encoder = Encoder(
        tower,
        head,
        processor,
        source=source,
        base_model=base_model,
        pixel_budget=pixel_budget,
        min_pixels=min_pixels,
        face_crop=face_crop,
        standardise=standardise,
        vignette=vignette,
    )
    encoder.eval()
    return encoder


# -- export -----------------------------------------------------------------------------------------------
def _is_peft(module: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(module, PeftModel)


def _save_full_tower(tower: Any, out: Path) -> None:
    """``config.json`` + ``model.safetensors`` with the module's own key names (``blocks.0...``).

    Not ``tower.save_pretrained``: it re-applies the load-time key mapping in reverse, which transformers
    5.0 turns into garbage names for an empty target (5.24 writes ``model.visual.``); plain names load
    the same way everywhere.
    """
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tower.config.save_pretrained(out)
    state = {k: v.detach().to("cpu").contiguous() for k, v in tower.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def save_encoder(encoder: Encoder, out_dir: str | Path, card: dict[str, Any] | None = None) -> Path:
    """Write ``encoder`` to ``out_dir`` in the layout ``load_encoder`` reads; returns ``out_dir``.

    Layout: ``tower/`` (``save_pretrained``: full weights, or LoRA adapters when the tower is a peft model),
    ``head.safetensors``, ``preprocessor_config.json`` (with the pinned budget), ``encoder_card.json``
    (base model, tower kind, dim, pixel budget, head settings, encoder_id, plus everything in ``card``:
    data counts, settings, validation metrics). Recomputes and sets ``encoder.encoder_id``.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lora = _is_peft(encoder.tower)
    if lora:
        encoder.tower.save_pretrained(out / TOWER_DIR)  # peft writes the adapters and their config only
    else:
        _save_full_tower(encoder.tower, out / TOWER_DIR)
    head_state = {k: v.detach().to("cpu").contiguous() for k, v in encoder.head.state_dict().items()}
    save_file(head_state, str(out / HEAD_WEIGHTS))
    encoder.processor.to_json_file(str(out / PREPROCESSOR_NAME))
    if lora:
        # The id is that of the merged tower, which is what load_encoder rebuilds.
        peft_tower: Any = copy.deepcopy(encoder.tower)
        merged = peft_tower.merge_and_unload()
        probe = Encoder(
            merged,
            encoder.head,
            encoder.processor,
            source=encoder.source,
            base_model=encoder.base_model,
            pixel_budget=encoder.pixel_budget,
            min_pixels=encoder.min_pixels,
            face_crop=encoder.face_crop,
            standardise=encoder.standardise,
            vignette=encoder.vignette,
        )
        encoder.encoder_id = probe.encoder_id
    else:
        encoder.encoder_id = encoder.compute_id()
    record: dict[str, Any] = dict(card or {})
    record.update(
        {
            "format": CARD_FORMAT,
            "base_model": encoder.base_model,
            "tower": "lora" if lora else "full",
            "dim": encoder.dim,
            "pixel_budget": encoder.pixel_budget,
            "min_pixels": encoder.min_pixels,
            "head": encoder.head.config(),
            "preprocessing": encoder.preprocessing_settings(),
            "encoder_id": encoder.encoder_id,
            "saved_dtype": _dtype_name(encoder.dtype),
        }
    )
    text = json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
    (out / CARD_NAME).write_text(text, encoding="utf-8")
    return out
