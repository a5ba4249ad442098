"""Qwen3-VL specifics: its preprocessing constants, loading its vision tower and image processor, device
and dtype resolution.

Both the production loader (:mod:`training.encoder`) and the test builder (:mod:`training.tiny`) take the
constants from here, so the loader never depends on the test builder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.errors import EncoderUnavailable, InvalidInput

if TYPE_CHECKING:
    from transformers import Qwen3VLVisionModel
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

log = logging.getLogger(__name__)

# Qwen3-VL's own preprocessing (its hub preprocessor_config.json): patch 16, merge 2, mean = std = 0.5.
# The Qwen2-VL class defaults differ (patch 14, CLIP mean/std), so these are always written out explicitly.
QWEN3_VL_PATCH_SIZE = 16
QWEN3_VL_MERGE_SIZE = 2
QWEN3_VL_TEMPORAL_PATCH_SIZE = 2
QWEN3_VL_IMAGE_MEAN = (0.5, 0.5, 0.5)
QWEN3_VL_IMAGE_STD = (0.5, 0.5, 0.5)
QWEN3_VL_MIN_PIXELS = 256 * 256
QWEN3_VL_MAX_PIXELS = 4096 * 4096  # the processor's own default: far too many tokens for an encoder
# Qwen3-VL checkpoints (transformers >= 4.57 layout) keep the tower under ``model.visual.``; older
# Qwen-VL exports used ``visual.``. Without this mapping from_pretrained silently leaves random weights.
TOWER_KEY_MAPPING = {r"^model\.visual\.": "", r"^visual\.": ""}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FP8_MIN_CAPABILITY = (8, 9)
CARD_NAME = "encoder_card.json"


def qwen3_vl_image_processor_config(
    min_pixels: int = QWEN3_VL_MIN_PIXELS, max_pixels: int = QWEN3_VL_MAX_PIXELS
) -> dict[str, Any]:
    """``preprocessor_config.json`` as Qwen/Qwen3-VL-2B-Instruct ships it (defaults: 256² to 4096² pixels)."""
    return {
        "size": {"longest_edge": max_pixels, "shortest_edge": min_pixels},
        "patch_size": QWEN3_VL_PATCH_SIZE,
        "temporal_patch_size": QWEN3_VL_TEMPORAL_PATCH_SIZE,
        "merge_size": QWEN3_VL_MERGE_SIZE,
        "image_mean": list(QWEN3_VL_IMAGE_MEAN),
        "image_std": list(QWEN3_VL_IMAGE_STD),
        "processor_class": "Qwen3VLProcessor",
        "image_processor_type": "Qwen2VLImageProcessorFast",
    }


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' load report (it lists every unused language-model weight as UNEXPECTED) and bars."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


# -- device and dtype -------------------------------------------------------------------------------------
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: the first CUDA GPU when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InvalidInput(f"device {device!r} is not a torch device") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EncoderUnavailable(f"device {device!r} asked for, but this machine has no usable CUDA GPU")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on a CUDA GPU that supports it, else float32 (bf16 on CPU is ~4x slower here)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise InvalidInput(f"dtype {dtype!r} is not one of auto, {', '.join(table)}")
    return table[dtype]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_fp8(source: str, config: dict[str, Any] | None, device: torch.device) -> None:
    """FP8 weights need a CUDA GPU of compute capability >= 8.9; fail clearly before transformers does."""
    quant = (config or {}).get("quantization_config") or {}
    method = str(quant.get("quant_method", "")).lower()
    is_fp8 = source.rstrip("/").lower().endswith("-fp8") or "fp8" in method
    if not is_fp8:
        return
    ok = (
        device.type == "cuda"
        and torch.cuda.is_available()
        and (torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY)
    )
    if not ok:
        raise EncoderUnavailable(
            f"{source} holds FP8 weights, which need a CUDA GPU of compute capability >= 8.9 "
            f"(Ada/Hopper or newer); this run has device {device}. Use the bf16 checkpoint "
            "(Qwen/Qwen3-VL-2B-Instruct) instead."
        )


# -- loading ----------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EncoderUnavailable(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise EncoderUnavailable(f"{path} does not hold a JSON object")
    return data


def _load_tower(path: str, dtype: torch.dtype, device: torch.device | None = None) -> Qwen3VLVisionModel:
    """The vision tower alone, from a full checkpoint, a bare tower, or a hub id; refuses partial loads."""
    from transformers import Qwen3VLVisionModel

    try:
        with _quiet_transformers():
            loaded: Any = Qwen3VLVisionModel.from_pretrained(
                path,
                key_mapping=TOWER_KEY_MAPPING,
                dtype=dtype,
                output_loading_info=True,
                # Straight onto the GPU (quantized weights must be placed at load time).
                device_map=str(device) if device is not None and device.type == "cuda" else None,
            )
        tower, info = loaded
    except (OSError, ValueError, KeyError) as exc:
        # Offline without a cached copy, a missing file, or a config of another model family.
        raise EncoderUnavailable(f"cannot load the Qwen3-VL vision tower from {path!r}: {exc}") from exc
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise EncoderUnavailable(
            f"{path!r} lacks {len(missing)} vision-tower weights (e.g. {missing[:3]}); "
            "loading it would leave them random"
        )
    return tower


def _pil_processor_class() -> Any:
    """Qwen2-VL's PIL/numpy image processor class, the same arithmetic with or without torchvision.

    transformers >= 5.x's backend refactor names it ``Qwen2VLImageProcessorPil`` (the plain name became
    the torchvision one); before that, the plain ``Qwen2VLImageProcessor`` was the PIL/numpy one.
    """
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    except ImportError:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

        return Qwen2VLImageProcessor
    return Qwen2VLImageProcessorPil


def _load_processor(
    path: str | None, tower: Qwen3VLVisionModel, pixel_budget: int
) -> tuple[Qwen2VLImageProcessorPil, int]:
    """Qwen's image processor (from ``path`` when it has one) with ``max_pixels = pixel_budget``.

    Returns the processor and its ``min_pixels``.
    """
    processor_class = _pil_processor_class()

    cfg: Any = tower.config
    kwargs: dict[str, Any] = {}
    if path is not None:
        try:
            with _quiet_transformers():
                kwargs = processor_class.get_image_processor_dict(path)[0]
        except (OSError, ValueError) as exc:
            log.info("no image processor config in %s (%s); using Qwen3-VL's values", path, exc)
            kwargs = {}
    if not kwargs:
        # Built by hand: the class defaults are Qwen2-VL's (patch 14, CLIP mean/std), not Qwen3-VL's.
        kwargs = {
            "patch_size": int(cfg.patch_size),
            "merge_size": int(cfg.spatial_merge_size),
            "temporal_patch_size": int(cfg.temporal_patch_size),
            "image_mean": list(QWEN3_VL_IMAGE_MEAN),
            "image_std": list(QWEN3_VL_IMAGE_STD),
            "size": {"shortest_edge": QWEN3_VL_MIN_PIXELS},
        }
    size = dict(kwargs.get("size") or {})
    own_min = int(kwargs.get("min_pixels") or size.get("shortest_edge") or QWEN3_VL_MIN_PIXELS)
    min_pixels = min(own_min, pixel_budget)
    for key in ("min_pixels", "max_pixels", "image_processor_type", "processor_class", "_processor_class"):
        kwargs.pop(key, None)
    kwargs["size"] = {"shortest_edge": min_pixels, "longest_edge": pixel_budget}
    processor = processor_class(**kwargs)
    expected = (int(cfg.patch_size), int(cfg.spatial_merge_size), int(cfg.temporal_patch_size))
    got = (int(processor.patch_size), int(processor.merge_size), int(processor.temporal_patch_size))
    if got != expected:
        raise EncoderUnavailable(
            f"image processor of {path} patches as (patch, merge, temporal) = {got}, the tower as {expected}"
        )
    return processor, min_pixels


def _tower_path_and_config(source: str) -> tuple[str, dict[str, Any] | None, bool]:
    """(path or hub id to load, its config.json when readable locally, is_local)."""
    path = Path(source).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise EncoderUnavailable(
                f"{path} has neither {CARD_NAME} nor config.json: not an encoder export or checkpoint"
            )
        return str(path), _read_json(config_file), True
    if path.exists():
        raise EncoderUnavailable(f"{path} is a file; give the checkpoint's directory")
    if not HUB_ID.match(source):
        raise EncoderUnavailable(f"{source!r} is neither a directory nor a hub id like 'Qwen/Qwen3-VL-2B-Instruct'")
    cached = _hub_source(source)
    if cached is not None:
        return str(cached), _read_json(cached / "config.json"), False
    return source, None, False


def _hub_source(repo_id: str) -> Path | None:
    """Check a hub id once, before transformers' loaders retry each file for ~25 s when the hub is down.

    Returns None to load ``repo_id`` from the hub (it answered, or HF_HUB_OFFLINE is set and the cache has
    it), or the cached snapshot folder when the hub cannot be reached but the cache has the model.
    Raises ``EncoderUnavailable`` at once for a model the hub does not have (a mistyped id) or one neither
    reachable nor cached.
    """
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    cached_config = try_to_load_from_cache(repo_id, "config.json")
    snapshot = Path(cached_config).parent if isinstance(cached_config, str) else None
    where = f"the local Hugging Face cache ({constants.HF_HUB_CACHE})"
    if constants.HF_HUB_OFFLINE:
        if snapshot is None:
            raise EncoderUnavailable(
                f"{repo_id!r} is not in {where} and HF_HUB_OFFLINE is set: check the id, or download it where "
                f"there is internet (hf download {repo_id}), or give a checkpoint directory"
            )
        return None
    try:
        model_info(repo_id, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except GatedRepoError as exc:
        raise EncoderUnavailable(f"{repo_id!r} is gated on the hub: accept its terms and set HF_TOKEN") from exc
    except RepositoryNotFoundError as exc:
        raise EncoderUnavailable(
            f"the Hugging Face hub has no model {repo_id!r} (mistyped? the default is "
            "'Qwen/Qwen3-VL-2B-Instruct'; a private model needs HF_TOKEN)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any transport or server error: the hub cannot be used now
        if snapshot is not None:
            log.warning("the Hugging Face hub cannot be reached (%s); using the cached copy of %s", exc, repo_id)
            return snapshot
        raise EncoderUnavailable(
            f"{repo_id!r} is not in {where} and the hub at {constants.ENDPOINT} cannot be reached "
            f"({type(exc).__name__}: {exc}): check the id and the network, or give a checkpoint directory"
        ) from exc
    return None
