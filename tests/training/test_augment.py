from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from training.augment import Augment, AugmentSettings, item_rng


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    arr = (rng.random((96, 80, 3)) * 255).astype(np.uint8)
    arr[:, :40] = [200, 150, 120]  # a flat half, so flips and crops are visible
    return Image.fromarray(arr)


def test_same_seed_same_image_other_seed_other_image(photo: Image.Image) -> None:
    aug = Augment()
    a = np.asarray(aug(photo, item_rng(1, 0, 5)))
    b = np.asarray(aug(photo, item_rng(1, 0, 5)))
    c = np.asarray(aug(photo, item_rng(1, 1, 5)))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == np.asarray(photo).shape


def test_all_off_is_identity(photo: Image.Image) -> None:
    off = AugmentSettings(
        crop_scale=(1.0, 1.0), crop_ratio=(80 / 96, 80 / 96), flip_p=0, brightness=0, contrast=0,
        saturation=0, hue=0, rotation_deg=0, jpeg_p=0,
    )
    out = Augment(off)(photo, item_rng(0, 0, 0))
    assert np.array_equal(np.asarray(out), np.asarray(photo))


def test_flip_only_mirrors(photo: Image.Image) -> None:
    flip = AugmentSettings(
        crop_scale=(1.0, 1.0), crop_ratio=(80 / 96, 80 / 96), flip_p=1, brightness=0, contrast=0,
        saturation=0, hue=0, rotation_deg=0, jpeg_p=0,
    )
    out = np.asarray(Augment(flip)(photo, item_rng(0, 0, 0)))
    assert np.array_equal(out, np.asarray(photo)[:, ::-1])


def test_augmentations_keep_the_photo_recognisable(photo: Image.Image) -> None:
    # Mild by design: the mean colour moves little (identity cues such as skin tone survive).
    aug = Augment()
    base = np.asarray(photo, dtype=np.float32).mean(axis=(0, 1))
    for i in range(10):
        out = np.asarray(aug(photo, item_rng(0, 0, i)), dtype=np.float32).mean(axis=(0, 1))
        assert np.abs(out - base).max() < 60


def test_bad_ranges_are_rejected() -> None:
    with pytest.raises(ValidationError, match="crop_scale"):
        AugmentSettings(crop_scale=(0.9, 0.5))
    with pytest.raises(ValidationError, match="jpeg_quality"):
        AugmentSettings(jpeg_quality=(0, 50))
