"""The photo encoder: Qwen3-VL's vision tower, mean-pooled per image, then a projection head to ``dim``.

``load_encoder`` reads three kinds of source:

- a hub id (``Qwen/Qwen3-VL-2B-Instruct``), through ``from_pretrained`` (needs the hub or a filled cache);
- a local directory holding a full Qwen3-VL checkpoint (``Qwen3VLForConditionalGeneration`` layout, whose
  vision weights are stored under ``model.visual.``), or a bare vision tower;
- a directory written by ``save_encoder`` (tower + head + preprocessing settings + ``encoder_card.json``).

Only the vision tower is loaded. Images go through Qwen's own image processor (PIL backend, so results do
not depend on whether torchvision is installed) with a pinned pixel budget; the processor's default would
allow 16.7 M pixels (65,536 tokens) per image.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from engine.errors import EncoderMismatch, EncoderUnavailable, InvalidInput

if TYPE_CHECKING:
    from transformers import Qwen3VLVisionModel
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from engine.settings import EncoderSettings

log = logging.getLogger(__name__)

DEFAULT_PIXEL_BUDGET = 448 * 448
DEFAULT_DIM = 512
# The head of a base checkpoint (no trained head) is drawn from this seed, so one source gives one encoder_id.
HEAD_SEED = 0
CARD_NAME = "encoder_card.json"
HEAD_WEIGHTS = "head.safetensors"
TOWER_DIR = "tower"
PREPROCESSOR_NAME = "preprocessor_config.json"
CARD_FORMAT = 1
# Qwen3-VL checkpoints (transformers >= 4.57 layout) keep the tower under ``model.visual.``; older
# Qwen-VL exports used ``visual.``. Without this mapping from_pretrained silently leaves random weights.
TOWER_KEY_MAPPING = {r"^model\.visual\.": "", r"^visual\.": ""}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FP8_MIN_CAPABILITY = (8, 9)


class ProjectionHead(nn.Module):
    """Pooled tower features ``(n, in_dim)`` -> ``(n, dim)`` (not normalised; the encoder normalises).

    ``BatchNorm1d`` first: without it, metric-learning training of the head collapses (see FINDINGS.md).
    ``hidden_dim > 0`` adds one GELU hidden layer.
    """

    def __init__(self, in_dim: int, dim: int, hidden_dim: int = 0, batch_norm: bool = True) -> None:
        super().__init__()
        if in_dim < 1 or dim < 1 or hidden_dim < 0:
            raise ValueError(f"bad head sizes: in_dim={in_dim}, dim={dim}, hidden_dim={hidden_dim}")
        self.in_dim, self.dim, self.hidden_dim, self.batch_norm = in_dim, dim, hidden_dim, batch_norm
        self.norm: nn.Module = nn.BatchNorm1d(in_dim) if batch_norm else nn.Identity()
        if hidden_dim:
            self.proj: nn.Module = nn.Sequential(
                nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim)
            )
        else:
            self.proj = nn.Linear(in_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))

    def config(self) -> dict[str, Any]:
        """The constructor arguments, as stored in the encoder card."""
        return {
            "in_dim": self.in_dim,
            "dim": self.dim,
            "hidden_dim": self.hidden_dim,
            "batch_norm": self.batch_norm,
        }

    @classmethod
    def seeded(cls, in_dim: int, dim: int, seed: int = HEAD_SEED, **kwargs: Any) -> ProjectionHead:
        """A head initialised from ``seed`` without touching the caller's random stream."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(in_dim, dim, **kwargs)


class Encoder(nn.Module):
    """Qwen3-VL vision tower -> per-image mean of merged tokens -> projection head -> L2 normalisation.

    Attributes: ``tower`` (``Qwen3VLVisionModel``), ``head`` (``ProjectionHead``, kept in float32),
    ``processor`` (Qwen's image processor with the pinned budget), ``encoder_id``, ``dim``, ``device``,
    ``dtype`` (of the tower), ``source``, ``base_model``, ``pixel_budget``, ``min_pixels``.
    """

    def __init__(
        self,
        tower: Qwen3VLVisionModel,
        head: ProjectionHead,
        processor: Qwen2VLImageProcessorPil,
        *,
        source: str,
        base_model: str,
        pixel_budget: int,
        min_pixels: int,
    ) -> None:
        super().__init__()
        # Any: a Qwen3VLVisionModel, or a peft model wrapping it while LoRA adapters are trained.
        self.tower: Any = tower
        self.head = head
        self.processor = processor
        self.source = source
        self.base_model = base_model
        self.pixel_budget = pixel_budget
        self.min_pixels = min_pixels
        self.dim = head.dim
        self.merge_size = int(tower.config.spatial_merge_size)
        self.encoder_id = self.compute_id()

    @property
    def device(self) -> torch.device:
        """Where the head (and tower) live; follows ``encoder.to(...)``."""
        return next(self.head.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The tower's compute dtype (of its first weight, the patch embedding); inputs are cast to it."""
        return next(self.tower.parameters()).dtype

    # -- identity ---------------------------------------------------------------------------------------
    def preprocessing_settings(self) -> dict[str, Any]:
        """Everything in preprocessing that changes the vectors (part of ``encoder_id``)."""
        p = self.processor
        return {
            "patch_size": int(p.patch_size),
            "merge_size": int(p.merge_size),
            "temporal_patch_size": int(p.temporal_patch_size),
            "image_mean": [float(v) for v in p.image_mean],
            "image_std": [float(v) for v in p.image_std],
            "resample": int(p.resample),
            "min_pixels": int(self.min_pixels),
            "max_pixels": int(self.pixel_budget),
            "alpha_background": "white",
        }

    def compute_id(self) -> str:
        """Short hash of tower + head weights (as float32), preprocessing settings and ``dim``.

        The same weights at the same precision give the same id on every load. Loading float32 weights in
        bfloat16 rounds them, so that encoder (whose vectors differ) gets another id.
        """
        h = hashlib.sha256()  # sha256 over blake2b: ~2.5x faster here (CPU SHA extensions)
        h.update(json.dumps({"dim": self.dim, "pre": self.preprocessing_settings()}, sort_keys=True).encode())
        for prefix, module in (("tower.", self.tower), ("head.", self.head)):
            for name, tensor in sorted(module.state_dict().items()):
                h.update((prefix + name).encode())
                h.update(str(tuple(tensor.shape)).encode())
                # One tensor at a time (a float32 copy only for non-float32 weights), hashed in place.
                flat = tensor.detach().to("cpu", torch.float32).contiguous().reshape(-1)
                h.update(memoryview(flat.numpy()).cast("B"))
        return h.hexdigest()[:16]

    # -- preprocessing ----------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """PIL images -> ``(pixel_values (patches, C*T*P*P) float32, image_grid_thw (n, 3) int64)`` on CPU.

        Images are EXIF-rotated and converted to RGB first. Raises ``InvalidInput`` for a non-image or an
        aspect ratio beyond 200:1.
        """
        if len(images) == 0:
            raise InvalidInput("no images to preprocess")
        rgb = [to_rgb(im, index=i) for i, im in enumerate(images)]
        try:
            batch = self.processor(images=rgb, return_tensors="pt")
        except (ValueError, OSError) as exc:  # extreme aspect ratio (smart_resize), truncated file data
            raise InvalidInput(f"image cannot be preprocessed: {exc}") from exc
        return batch["pixel_values"], batch["image_grid_thw"]

    # -- forward ----------------------------------------------------------------------------------------
    def pool(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """Tower features mean-pooled per image: ``(n_images, out_hidden)`` float32, with grad.

        The tower returns the merged tokens of all images concatenated (``pooler_output``); image ``i``
        owns ``t*h*w / merge_size**2`` of them, in order.
        """
        grid = image_grid_thw.to(self.device)
        out = self.tower(pixel_values.to(self.device, self.dtype), grid_thw=grid)
        tokens = out.pooler_output
        sizes = (image_grid_thw.prod(-1) // self.merge_size**2).tolist()
        if sum(sizes) != tokens.shape[0]:
            raise RuntimeError(f"tower returned {tokens.shape[0]} tokens for grids summing to {sum(sizes)}")
        return torch.stack([chunk.float().mean(0) for chunk in torch.split(tokens, sizes)])

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """``(n_images, dim)`` float32, L2-normalised, with grad (for training)."""
        return F.normalize(self.head(self.pool(pixel_values, image_grid_thw)), dim=-1)

    @torch.inference_mode()
    def embed(
        self, images: Sequence[Image.Image] | Image.Image, batch_size: int = 8, progress: bool = False
    ) -> np.ndarray:
        """Embed PIL images: ``(n, dim)`` float32 numpy, L2-normalised, no grad, in eval mode.

        One image (not in a list) gives one ``(dim,)`` vector, as sentence-transformers' ``encode`` does.
        Raises ``InvalidInput`` for an unusable image (naming its index in ``images``).
        """
        if isinstance(images, Image.Image):
            return self.embed([images], batch_size=batch_size, progress=progress)[0]
        if batch_size < 1:
            raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out: list[np.ndarray] = []
        starts = range(0, len(images), batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="embed", unit="batch")  # type: ignore[assignment]
        with _eval_mode(self):
            for start in starts:
                chunk = images[start : start + batch_size]
                try:
                    pixel_values, grid = self.preprocess(chunk)
                except InvalidInput as exc:
                    raise InvalidInput(f"images[{start}:{start + len(chunk)}]: {exc}") from exc
                out.append(self(pixel_values, grid).float().cpu().numpy())
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def to_rgb(image: Image.Image, index: int | None = None) -> Image.Image:
    """EXIF-rotate and convert to 8-bit RGB; transparency is composited onto white.

    Raises ``InvalidInput`` (naming ``index``) when ``image`` is not a PIL image.
    """
    where = f"image {index}" if index is not None else "image"
    if not isinstance(image, Image.Image):
        raise InvalidInput(f"{where} is a {type(image).__name__}, not a PIL image")
    try:
        image = ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError, TypeError, KeyError) as exc:
        # A corrupt EXIF block is common in the wild; the pixels are still good, just unrotated.
        log.warning("%s: EXIF orientation unreadable (%s); used as stored", where, exc)
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit and float greyscale: convert("RGB") would clip, so rescale to 0..255 first.
        arr = np.asarray(image, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


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
    ok = device.type == "cuda" and torch.cuda.is_available() and (
        torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY
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
    from training.tiny import QWEN3_VL_IMAGE_MEAN, QWEN3_VL_IMAGE_STD, QWEN3_VL_MIN_PIXELS

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
        raise EncoderUnavailable(
            f"{source!r} is neither a directory nor a hub id like 'Qwen/Qwen3-VL-2B-Instruct'"
        )
    return source, None, False


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
        encoder.encoder_id, source_str, encoder.dim, torch_dtype, dev, encoder.pixel_budget,
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
    return _assemble(tower, head, processor, source=source, base_model=source, pixel_budget=pixel_budget,
                     min_pixels=min_pixels, dev=dev, dtype=torch_dtype)


def _load_base(
    source: str, dev: torch.device, dtype: torch.dtype, pixel_budget: int | None, dim: int | None
) -> Encoder:
    path, config, is_local = _tower_path_and_config(source)  # reads nothing from the network
    _check_fp8(source, config, dev)  # before transformers fails deep inside
    tower = _load_tower(path, dtype, dev)
    budget = pixel_budget or DEFAULT_PIXEL_BUDGET
    processor, min_pixels = _load_processor(path, tower, budget)
    head = ProjectionHead.seeded(int(tower.config.out_hidden_size), dim or DEFAULT_DIM)
    base = str(Path(path).resolve()) if is_local else source
    return _assemble(tower, head, processor, source=source, base_model=base, pixel_budget=budget,
                     min_pixels=min_pixels, dev=dev, dtype=dtype)


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
        raise EncoderUnavailable(
            f"{path / CARD_NAME}: unknown tower kind {kind!r} (expected 'full' or 'lora')"
        )
    budget = pixel_budget or int(card.get("pixel_budget") or DEFAULT_PIXEL_BUDGET)
    if pixel_budget is not None and card.get("pixel_budget") and pixel_budget != int(card["pixel_budget"]):
        log.warning("%s was exported with pixel budget %s; using %d (vectors will differ)",
                    path, card["pixel_budget"], pixel_budget)
    processor, min_pixels = _load_processor(str(path), tower, budget)
    head = ProjectionHead(
        int(head_cfg["in_dim"]), int(head_cfg["dim"]),
        hidden_dim=int(head_cfg.get("hidden_dim", 0)), batch_norm=bool(head_cfg.get("batch_norm", True)),
    )
    try:
        head.load_state_dict(load_file(str(path / HEAD_WEIGHTS)))
    except (OSError, RuntimeError) as exc:
        raise EncoderUnavailable(
            f"cannot load the projection head from {path / HEAD_WEIGHTS}: {exc}"
        ) from exc
    if head.in_dim != int(tower.config.out_hidden_size):
        raise EncoderUnavailable(f"{path}: head takes {head.in_dim} features, tower gives "
                                 f"{tower.config.out_hidden_size}")
    encoder = _assemble(tower, head, processor, source=str(path), base_model=base_model or str(path),
                        pixel_budget=budget, min_pixels=min_pixels, dev=dev, dtype=dtype)
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
        raise EncoderUnavailable(
            f"{adapter_dir.parent / CARD_NAME}: a LoRA export must name its 'base_model'"
        )
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
) -> Encoder:
    movable: Any = tower
    if getattr(tower, "hf_quantizer", None) is None:
        movable.to(device=dev, dtype=dtype)
    else:  # quantized (FP8) weights keep their dtype; transformers refuses a dtype cast
        movable.to(device=dev)
    head.to(device=dev, dtype=torch.float32)  # small; float32 keeps the output precise under a bf16 tower
    encoder = Encoder(tower, head, processor, source=source, base_model=base_model, pixel_budget=pixel_budget,
                      min_pixels=min_pixels)
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
        probe = Encoder(merged, encoder.head, encoder.processor, source=encoder.source,
                        base_model=encoder.base_model, pixel_budget=encoder.pixel_budget,
                        min_pixels=encoder.min_pixels)
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
