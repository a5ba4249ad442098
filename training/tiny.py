"""Tiny and real-size Qwen3-VL configurations with random weights: tests and benchmarks without a download.

``build_tiny_checkpoint`` writes a complete (vision + text) ``Qwen3VLForConditionalGeneration`` in Hugging
Face format, so the encoder is exercised through exactly the code path that reads the real checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The constants live with the loader; re-exported here for the builders below and older imports.
from training.qwen3_vl import (  # noqa: F401
    QWEN3_VL_IMAGE_MEAN,
    QWEN3_VL_IMAGE_STD,
    QWEN3_VL_MAX_PIXELS,
    QWEN3_VL_MERGE_SIZE,
    QWEN3_VL_MIN_PIXELS,
    QWEN3_VL_PATCH_SIZE,
    QWEN3_VL_TEMPORAL_PATCH_SIZE,
    qwen3_vl_image_processor_config,
)


def tiny_vision_config_dict() -> dict[str, Any]:
    """A 2-block, 64-wide vision tower with Qwen3-VL's patching (patch 16, merge 2, temporal 2)."""
    return {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 4,
        "out_hidden_size": 64,
        "patch_size": QWEN3_VL_PATCH_SIZE,
        "spatial_merge_size": QWEN3_VL_MERGE_SIZE,
        "temporal_patch_size": QWEN3_VL_TEMPORAL_PATCH_SIZE,
        "num_position_embeddings": 256,  # a 16 x 16 learned grid, resampled to each image's grid
        # The default (8, 16, 24) indexes blocks a 2-block tower does not have.
        "deepstack_visual_indexes": [],
        "hidden_act": "gelu_pytorch_tanh",
    }


# The demo's tiny tower (matcher demo, bench/train_recipe.py): 8-pixel patches, so a 64 x 64 face crop is
# 8 x 8 patches (16 merged tokens) instead of 4 x 4 at Qwen's 16; measured in docs/training.md.
DEMO_TINY_VISION: dict[str, Any] = {"patch_size": 8}


def real_vision_config_dict() -> dict[str, Any]:
    """The vision tower of Qwen/Qwen3-VL-2B-Instruct (its config.json): 24 blocks, 1024 wide, 2048 out."""
    return {
        "depth": 24,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_heads": 16,
        "out_hidden_size": 2048,
        "patch_size": QWEN3_VL_PATCH_SIZE,
        "spatial_merge_size": QWEN3_VL_MERGE_SIZE,
        "temporal_patch_size": QWEN3_VL_TEMPORAL_PATCH_SIZE,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [5, 11, 17],
        "hidden_act": "gelu_pytorch_tanh",
        "in_channels": 3,
        "initializer_range": 0.02,
    }


def real_vision_config():  # -> transformers.Qwen3VLVisionConfig
    """``Qwen3VLVisionConfig`` of Qwen3-VL-2B's vision tower (~407 M parameters), for benchmarks."""
    # Imported from its module: transformers 5.0 does not export it at the top level.
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig

    return Qwen3VLVisionConfig(**real_vision_config_dict())


def tiny_config(vision: dict[str, Any] | None = None):  # -> transformers.Qwen3VLConfig
    """A full ``Qwen3VLConfig`` (vision + text) small enough to build and save in about a second.

    ``vision``: entries that replace those of :func:`tiny_vision_config_dict` (e.g. ``depth``, ``hidden_size``).
    """
    from transformers import Qwen3VLConfig

    head_dim = 16
    text = {
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": head_dim,
        "max_position_embeddings": 1024,
        # mrope sections split head_dim / 2 rotary frequencies over (t, h, w).
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [4, 2, 2],
            "mrope_interleaved": True,
        },
    }
    return Qwen3VLConfig(
        vision_config={**tiny_vision_config_dict(), **(vision or {})},
        text_config=text,
        # Special tokens inside the tiny vocabulary, so the saved model is usable end to end.
        image_token_id=500,
        video_token_id=501,
        vision_start_token_id=502,
        vision_end_token_id=503,
    )


def build_tiny_checkpoint(out_dir: str | Path, seed: int = 0, vision: dict[str, Any] | None = None) -> Path:
    """Save a randomly-initialised tiny ``Qwen3VLForConditionalGeneration`` in Hugging Face format.

    Writes ``config.json``, ``model.safetensors`` and a Qwen3-VL ``preprocessor_config.json`` into ``out_dir``
    (created if missing); ``vision`` overrides entries of the tiny vision config. The same ``seed`` gives the
    same weights. Takes about a second on CPU.
    Returns ``out_dir`` as a ``Path``.
    """
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = tiny_config(vision)
    # fork_rng: a fixed seed here must not reset the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: Any = Qwen3VLForConditionalGeneration(config)
    model.float().save_pretrained(out)
    processor = qwen3_vl_image_processor_config()
    # The processor must patch as the tower does (a tiny config may change patch, merge or temporal size).
    vc = config.vision_config
    processor.update(
        patch_size=int(vc.patch_size),
        merge_size=int(vc.spatial_merge_size),
        temporal_patch_size=int(vc.temporal_patch_size),
    )
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8")
    return out
