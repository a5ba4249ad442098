"""The parts the demo's training recipe added (docs/training.md): face crop and colour standardisation in the
encoder's own preprocessing (kept by the export), lighting augmentations, the proxy loss, tiny towers with
other patch sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import InvalidInput
from training.augment import Augment, AugmentSettings, item_rng
from training.encoder import load_encoder, save_encoder
from training.losses import ProxySoftmaxLoss, build_loss
from training.model import face_crop_box, standardise_channels
from training.tiny import build_tiny_checkpoint


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize("size", [(100, 100), (90, 160), (160, 90), (33, 500)])
def test_face_crop_box_is_a_square_inside_the_image(size: tuple[int, int]) -> None:
    w, h = size
    left, top, right, bottom = face_crop_box(size, 0.8)
    assert right - left == bottom - top == round(0.8 * min(w, h))
    assert 0 <= left and 0 <= top and right <= w and bottom <= h


def test_face_crop_box_is_centred_where_faces_are() -> None:
    left, top, right, bottom = face_crop_box((200, 400), 0.5)  # side 100, centre (100, 180)
    assert (left, top, right, bottom) == (50, 130, 150, 230)


def test_standardise_channels_per_image_and_channel() -> None:
    grid = torch.tensor([[1, 2, 2], [1, 2, 4]])
    pv = torch.randn(4 + 8, 3 * 2 * 4 * 4) * 3 + 5
    pv[4:, : 2 * 16] += 100.0  # the second image's first channel: a strong cast
    out = standardise_channels(pv, grid, channels=3)
    for rows in (slice(0, 4), slice(4, 12)):
        x = out[rows].reshape(-1, 3, 32)
        assert torch.allclose(x.mean(dim=(0, 2)), torch.zeros(3), atol=1e-4)
        assert torch.allclose(x.std(dim=(0, 2)), torch.full((3,), 0.5), atol=1e-3)


def test_colour_cast_and_brightness_barely_move_a_standardised_embedding(tiny_checkpoint: Path) -> None:
    enc = load_encoder(tiny_checkpoint, device="cpu", dtype="float32", pixel_budget=64 * 64, dim=16)
    img = _photo(96, 80)
    lut = np.concatenate([np.clip(np.arange(256) * g + 10, 0, 255) for g in (1.2, 0.9, 0.8)]).astype(np.uint8)
    cast = img.point(lut.tolist())
    plain = enc.embed([img, cast])
    enc.standardise = True
    std = enc.embed([img, cast])
    assert float(std[0] @ std[1]) > 0.99
    assert float(std[0] @ std[1]) > float(plain[0] @ plain[1])


def test_export_keeps_the_preprocessing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    enc = load_encoder(tiny_checkpoint, device="cpu", dtype="float32", pixel_budget=64 * 64, dim=16)
    plain_id = enc.encoder_id
    enc.face_crop, enc.standardise = 0.8, True
    out = save_encoder(enc, tmp_path / "enc")
    assert enc.encoder_id != plain_id  # preprocessing is part of the id
    back = load_encoder(out, device="cpu", dtype="float32")
    assert (back.face_crop, back.standardise) == (0.8, True)
    assert back.encoder_id == enc.encoder_id
    images = [_photo(120, 90, 1), _photo(64, 128, 2)]
    np.testing.assert_allclose(back.embed(images), enc.embed(images), atol=1e-5)


def test_face_crop_out_of_range_is_refused(tiny_checkpoint: Path) -> None:
    enc = load_encoder(tiny_checkpoint, device="cpu", dtype="float32", pixel_budget=64 * 64, dim=16)
    with pytest.raises(InvalidInput, match="face_crop"):
        type(enc)(
            enc.tower,
            enc.head,
            enc.processor,
            source="x",
            base_model="x",
            pixel_budget=64 * 64,
            min_pixels=enc.min_pixels,
            face_crop=1.5,
        )


def test_lighting_augmentations_are_seeded_and_off_by_default() -> None:
    img = _photo(64, 48)
    flat = AugmentSettings(
        crop_scale=(1.0, 1.0),
        crop_ratio=(64 / 48, 64 / 48),
        flip_p=0,
        brightness=0,
        contrast=0,
        saturation=0,
        hue=0,
        rotation_deg=0,
        jpeg_p=0,
    )
    assert np.array_equal(np.asarray(Augment(flat)(img, item_rng(0, 0, 0))), np.asarray(img))
    lit = Augment(flat.model_copy(update={"channel_gain": 0.2, "light_ramp": 0.5}))
    a, b = lit(img, item_rng(0, 0, 0)), lit(img, item_rng(0, 0, 0))
    c = lit(img, item_rng(0, 0, 1))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert not np.array_equal(np.asarray(a), np.asarray(img))
    assert a.size == img.size


def test_proxy_loss_prefers_embeddings_near_their_own_proxy() -> None:
    loss = ProxySoftmaxLoss(3, 4, temperature=0.1, seed=0)
    labels = torch.tensor([0, 1, 2])
    near = loss.proxies.detach().clone()
    far = near[[1, 2, 0]]
    with torch.no_grad():
        assert float(loss(near, labels)) < float(loss(far, labels))
    value = loss(torch.randn(3, 4, requires_grad=True), labels)
    value.backward()
    assert loss.proxies.grad is not None and loss.proxies.grad.abs().sum() > 0


def test_build_loss_proxy_needs_classes_and_has_parameters() -> None:
    with pytest.raises(InvalidInput, match="n_classes"):
        build_loss(["proxy"])
    combined = build_loss(["proxy", "supcon"], n_classes=5, dim=8)
    assert sum(p.numel() for p in combined.parameters()) == 5 * 8


def test_tiny_checkpoint_with_8_pixel_patches_embeds(tmp_path: Path) -> None:
    ckpt = build_tiny_checkpoint(tmp_path / "p8", vision={"patch_size": 8})
    enc = load_encoder(ckpt, device="cpu", dtype="float32", pixel_budget=64 * 64, dim=16)
    assert enc.processor.patch_size == 8
    pixel_values, grid = enc.preprocess([_photo(64, 64)])
    assert grid.tolist() == [[1, 8, 8]]  # 64 / 8 patches a side
    assert enc.embed(_photo(64, 64)).shape == (16,)
