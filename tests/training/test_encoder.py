"""The encoder over a tiny, randomly-initialised but real Qwen3-VL checkpoint saved in Hugging Face format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from engine.errors import EncoderMismatch, EncoderUnavailable, InvalidInput
from training.encoder import Encoder, load_encoder, save_encoder
from training.images import to_rgb

TINY = {"device": "cpu", "dtype": "float32", "pixel_budget": 64 * 64, "dim": 32}


def _photo(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A structured RGB image (gradients + blobs), width x height = ``size``."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3)[None, None, :] * (0.5 + 0.5 * np.sin(xx / rng.uniform(5, 20)))[..., None]
    base += rng.uniform(0, 80, 3)[None, None, :] * (yy / h)[..., None]
    base += rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def _linear(encoder: Encoder) -> torch.nn.Linear:
    proj = encoder.head.proj
    assert isinstance(proj, torch.nn.Linear)
    return proj


def _fresh(ckpt: Path, **kwargs: object) -> Encoder:
    return load_encoder(ckpt, **{**TINY, **kwargs})  # type: ignore[arg-type]


# -- loading the tower ------------------------------------------------------------------------------------
def test_tower_weights_are_the_saved_ones(tiny_checkpoint: Path, tiny_encoder: Encoder) -> None:
    saved = load_file(str(tiny_checkpoint / "model.safetensors"))
    visual = {k.removeprefix("model.visual."): v for k, v in saved.items() if k.startswith("model.visual.")}
    loaded = tiny_encoder.tower.state_dict()
    assert set(visual) == set(loaded)
    for name, tensor in visual.items():
        assert torch.equal(loaded[name], tensor), name


def test_without_key_mapping_the_tower_would_stay_random(tiny_checkpoint: Path) -> None:
    """The pitfall load_encoder guards against: a plain from_pretrained silently keeps random weights."""
    from transformers import Qwen3VLVisionModel

    saved = load_file(str(tiny_checkpoint / "model.safetensors"))
    naive = Qwen3VLVisionModel.from_pretrained(tiny_checkpoint).state_dict()
    name = "blocks.0.attn.qkv.weight"
    assert not torch.equal(naive[name], saved["model.visual." + name])


def test_checkpoint_without_tower_weights_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_checkpoint / "config.json", tmp_path / "config.json")
    saved = load_file(str(tiny_checkpoint / "model.safetensors"))
    text_only = {k: v for k, v in saved.items() if not k.startswith("model.visual.")}
    save_file(text_only, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(EncoderUnavailable, match="lacks .* vision-tower weights"):
        load_encoder(tmp_path, **TINY)  # type: ignore[arg-type]


def test_encoder_id_is_stable_and_tracks_weights(tiny_checkpoint: Path, tiny_encoder: Encoder) -> None:
    again = _fresh(tiny_checkpoint)
    assert again.encoder_id == tiny_encoder.encoder_id
    assert len(tiny_encoder.encoder_id) == 16
    assert _fresh(tiny_checkpoint, dim=16).encoder_id != tiny_encoder.encoder_id
    assert _fresh(tiny_checkpoint, pixel_budget=128 * 128).encoder_id != tiny_encoder.encoder_id
    with torch.no_grad():
        _linear(again).weight.add_(1e-3)
    assert again.compute_id() != tiny_encoder.encoder_id


def test_processor_uses_qwen3_vl_values_and_the_budget(tiny_encoder: Encoder) -> None:
    p = tiny_encoder.processor
    assert (p.patch_size, p.merge_size, p.temporal_patch_size) == (16, 2, 2)
    assert list(p.image_mean) == [0.5, 0.5, 0.5] and list(p.image_std) == [0.5, 0.5, 0.5]
    assert p.size["longest_edge"] == 64 * 64
    assert p.size["shortest_edge"] == 64 * 64  # the checkpoint's 256*256 minimum, capped by the budget


def test_checkpoint_without_processor_config_gets_qwen3_values(tiny_checkpoint: Path, tmp_path: Path) -> None:
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_checkpoint / name, tmp_path / name)
    p = _fresh(tmp_path).processor
    # Qwen2-VL's class defaults would be patch 14 and CLIP's mean/std.
    assert p.patch_size == 16 and list(p.image_mean) == [0.5, 0.5, 0.5]


# -- embeddings -------------------------------------------------------------------------------------------
def test_embeddings_are_unit_float32_rows(tiny_encoder: Encoder) -> None:
    vectors = tiny_encoder.embed([_photo(1), _photo(2, (50, 120))])
    assert vectors.shape == (2, 32)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert tiny_encoder.embed([]).shape == (0, 32)
    assert tiny_encoder.device == torch.device("cpu") and tiny_encoder.dtype == torch.float32


def test_bfloat16_tower_gives_float32_vectors(tiny_checkpoint: Path, tiny_encoder: Encoder) -> None:
    from training.encoder import resolve_dtype

    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32  # bf16 on CPU is ~4x slower
    bf16 = _fresh(tiny_checkpoint, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    images = [_photo(11), _photo(12)]
    vectors = bf16.embed(images)
    assert vectors.dtype == np.float32
    cosines = (vectors * tiny_encoder.embed(images)).sum(axis=1)
    assert (cosines > 0.99).all(), cosines


def test_batched_equals_one_by_one(tiny_encoder: Encoder) -> None:
    sizes = [(96, 72), (64, 64), (200, 90), (70, 140), (300, 300)]
    images = [_photo(i, size) for i, size in enumerate(sizes)]
    batched = tiny_encoder.embed(images, batch_size=3)
    single = np.concatenate([tiny_encoder.embed([im]) for im in images])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_different_images_give_different_vectors(tiny_encoder: Encoder) -> None:
    vectors = tiny_encoder.embed([_photo(1), _photo(2), _photo(1)])
    assert float(vectors[0] @ vectors[1]) < 0.999
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)


def test_forward_has_grad_and_pool_gives_tower_features(tiny_encoder: Encoder) -> None:
    pixel_values, grid = tiny_encoder.preprocess([_photo(3), _photo(4, (40, 100))])
    assert grid.shape == (2, 3)
    pooled = tiny_encoder.pool(pixel_values, grid)
    assert pooled.shape == (2, 64) and pooled.dtype == torch.float32
    out = tiny_encoder(pixel_values, grid)
    assert out.shape == (2, 32) and out.requires_grad
    out.sum().backward()
    assert _linear(tiny_encoder).weight.grad is not None
    tiny_encoder.zero_grad(set_to_none=True)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "I;16"])
def test_any_image_mode_embeds(tiny_encoder: Encoder, mode: str) -> None:
    rgb = _photo(5)
    if mode == "I;16":
        image = Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
        assert image.mode == "I;16"
    else:
        image = rgb.convert(mode)
    assert to_rgb(image).mode == "RGB"
    vector = tiny_encoder.embed([image])
    assert vector.shape == (1, 32) and np.isfinite(vector).all()


def test_transparency_is_composited_on_white() -> None:
    image = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert to_rgb(image).getpixel((5, 5)) == (255, 255, 255)


def test_exif_rotation_is_applied(tiny_encoder: Encoder, tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned; display rotated 90 degrees clockwise
    _photo(6, (120, 60)).save(path, exif=exif.tobytes(), quality=95)
    with Image.open(path) as im:
        im.load()
        tagged = im.copy()
    raw = Image.fromarray(np.asarray(tagged))  # same decoded pixels, no EXIF
    by_hand = Image.fromarray(np.asarray(raw.transpose(Image.Transpose.ROTATE_270)))
    assert to_rgb(tagged).size == (60, 120)
    vectors = tiny_encoder.embed([tagged, by_hand, raw])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    assert float(vectors[0] @ vectors[2]) < 0.9999


def test_pixel_budget_caps_tokens_of_a_huge_image(tiny_encoder: Encoder) -> None:
    huge = Image.new("RGB", (4000, 3000), (120, 60, 30))
    pixel_values, grid = tiny_encoder.preprocess([huge])
    t, h, w = (int(x) for x in grid[0])
    assert t * h * w * 16 * 16 <= 64 * 64  # without the budget: ~46,000 patches
    assert pixel_values.shape[0] == t * h * w
    assert w >= h  # landscape stays landscape


def test_non_images_are_invalid_input(tiny_encoder: Encoder) -> None:
    with pytest.raises(InvalidInput, match="not a PIL image"):
        tiny_encoder.embed([np.zeros((10, 10, 3))])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="aspect ratio"):
        tiny_encoder.embed([Image.new("RGB", (4000, 10))])


# -- export -----------------------------------------------------------------------------------------------
def test_save_and_load_round_trip(tiny_checkpoint: Path, tmp_path: Path) -> None:
    encoder = _fresh(tiny_checkpoint)
    with torch.no_grad():  # as if trained: the exported head must be the one that is loaded back
        _linear(encoder).weight.mul_(1.5)
        norm = encoder.head.norm
        assert isinstance(norm, torch.nn.BatchNorm1d) and norm.running_mean is not None
        norm.running_mean.add_(0.1)
    images = [_photo(7), _photo(8, (60, 130))]
    before = encoder.embed(images)
    card_in = {"train": {"photos": 12, "identities": 3}, "recall@1": 0.5}
    out = save_encoder(encoder, tmp_path / "export", card_in)
    card = json.loads((out / "encoder_card.json").read_text())
    assert card["tower"] == "full" and card["dim"] == 32 and card["pixel_budget"] == 64 * 64
    assert card["encoder_id"] == encoder.encoder_id
    assert card["train"] == {"photos": 12, "identities": 3} and card["recall@1"] == 0.5
    assert card["base_model"] == str(tiny_checkpoint.resolve())
    # The module's own key names: loads without any key mapping, on every transformers 5.x.
    assert all(k.startswith(("blocks.", "merger.", "patch_embed.", "pos_embed."))
               for k in load_file(str(out / "tower" / "model.safetensors")))

    loaded = load_encoder(out, device="cpu", dtype="float32")  # dim and budget come from the export
    assert loaded.encoder_id == encoder.encoder_id
    assert (loaded.dim, loaded.pixel_budget) == (32, 64 * 64)
    np.testing.assert_array_equal(loaded.embed(images), before)
    with pytest.raises(EncoderMismatch, match="dim 32"):
        load_encoder(out, device="cpu", dtype="float32", dim=512)


def test_lora_export_round_trip(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    encoder = _fresh(tiny_checkpoint)
    base_vectors = encoder.embed([_photo(9)])
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "proj"])
    encoder.tower = get_peft_model(encoder.tower, lora)
    with torch.no_grad():  # lora_B starts at zero; make the adapters do something
        for name, param in encoder.tower.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    images = [_photo(9), _photo(10)]
    adapted = encoder.embed(images)
    assert float(adapted[0] @ base_vectors[0]) < 0.9999
    out = save_encoder(encoder, tmp_path / "lora", {})
    card = json.loads((out / "encoder_card.json").read_text())
    assert card["tower"] == "lora"
    assert (out / "tower" / "adapter_config.json").is_file()
    loaded = load_encoder(out, device="cpu", dtype="float32")
    assert loaded.encoder_id == card["encoder_id"]
    np.testing.assert_allclose(loaded.embed(images), adapted, atol=1e-5)


# -- sources that cannot load here ------------------------------------------------------------------------
def test_hub_id_offline_is_encoder_unavailable() -> None:
    from huggingface_hub import try_to_load_from_cache

    hub_id = "Qwen/Qwen3-VL-2B-Instruct"
    if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
        pytest.skip(f"{hub_id} is in the local Hugging Face cache, so it would load")
    offline = r"is not in the local Hugging Face cache \(.*\) and HF_HUB_OFFLINE is set"
    with pytest.raises(EncoderUnavailable, match=offline):
        load_encoder(hub_id, device="cpu", dtype="float32")


def test_missing_directory_is_encoder_unavailable(tmp_path: Path) -> None:
    with pytest.raises(EncoderUnavailable, match="neither a directory nor a hub id"):
        load_encoder(tmp_path / "nowhere" / "deep" / "x", device="cpu")
    with pytest.raises(EncoderUnavailable, match="nor config.json"):
        load_encoder(tmp_path, device="cpu")


def test_fp8_needs_a_recent_gpu(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(EncoderUnavailable, match="compute capability >= 8.9"):
        load_encoder("Qwen/Qwen3-VL-2B-Instruct-FP8", device="cpu")
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(tiny_checkpoint / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(EncoderUnavailable, match="FP8"):
        load_encoder(tmp_path, device="cpu")


# -- CLI --------------------------------------------------------------------------------------------------
def test_cli_builds_and_embeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from matcher.cli import main

    assert main(["build-tiny-encoder", str(tmp_path / "tiny"), "--seed", "3"]) == 0
    assert (tmp_path / "tiny" / "config.json").is_file()
    for i in range(2):
        _photo(20 + i).save(tmp_path / f"p{i}.jpg")
    capsys.readouterr()
    code = main(["--no-progress", "embed", str(tmp_path / "p0.jpg"), str(tmp_path / "p1.jpg"),
                 "--encoder", str(tmp_path / "tiny"), "--device", "cpu", "--dim", "8",
                 "--pixel-budget", "4096", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["dim"] == 8 and len(record["images"]) == 2
    assert all(abs(img["norm"] - 1.0) < 1e-5 and len(img["vector"]) == 8 for img in record["images"])
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    code = main(["--no-progress", "embed", str(tmp_path / "bad.jpg"), "--encoder", str(tmp_path / "tiny"),
                 "--device", "cpu", "--pixel-budget", "4096"])
    assert code == 2
    assert "bad.jpg" in capsys.readouterr().err


def test_vignette_greys_the_corners_changes_the_id_and_survives_export(tiny_checkpoint: Path, tmp_path: Path) -> None:
    encoder = _fresh(tiny_checkpoint)
    plain_id = encoder.encoder_id
    image = Image.new("RGB", (128, 128), (250, 20, 20))  # red everywhere: the corners turn grey, the centre stays
    with pytest.raises(InvalidInput, match="vignette"):
        Encoder(
            encoder.tower,
            encoder.head,
            encoder.processor,
            source="x",
            base_model="x",
            pixel_budget=64 * 64,
            min_pixels=16,
            vignette=1.5,
        )
    encoder.vignette = 0.42
    encoder.encoder_id = encoder.compute_id()
    assert encoder.encoder_id != plain_id
    assert encoder.preprocessing_settings()["vignette"] == 0.42
    pv, grid = encoder.preprocess([image])
    # Qwen's normalisation maps 0..255 to -1..1: red 250 -> 0.96, mid-grey -> ~0. The first patch row is the
    # top-left patch, (C, T, P, P): its first pixel is the image's corner, outside the ellipse.
    assert int(grid.prod()) == pv.shape[0]
    p = int(encoder.processor.patch_size)
    assert float(pv[0].reshape(3, -1, p, p)[:, :, 0, 0].abs().max()) < 0.05
    assert float(pv.reshape(pv.shape[0], 3, -1)[:, 0].max()) > 0.9  # the centre keeps the red
    out = save_encoder(encoder, tmp_path / "export", {})
    loaded = load_encoder(out, device="cpu", dtype="float32")
    assert loaded.vignette == 0.42 and loaded.encoder_id == encoder.encoder_id
    np.testing.assert_array_equal(loaded.embed([image]), encoder.embed([image]))
