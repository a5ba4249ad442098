"""The tensor augmentation path (``augment_backend="tensor"``) and the cached validation preprocessing:
same layout as Qwen's processor, views that keep shapes and labels and differ per epoch and seed, batches
that embed as their images one by one, and validation scores equal to ``encoder.embed``'s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from engine.errors import InvalidInput
from training.augment import AugmentSettings
from training.data import PhotoDataset, load_image, read_dataset
from training.encoder import Encoder, load_encoder
from training.evaluator import PhotoEvaluator, retrieval_scores
from training.model import standardise_channels, vignette_weights
from training.samplers import PKBatchSampler
from training.settings import TrainSettings
from training.tensor_augment import (
    TensorBatches,
    augment_views,
    context_crop,
    square_side,
    standardise_square,
    to_tower_inputs,
)

AUG = AugmentSettings(hue=0.0, jpeg_p=0.0, saturation=0.1, channel_gain=0.12, light_ramp=0.3, rotation_deg=10.0)


def _settings(**kw: object) -> TrainSettings:
    base: dict[str, object] = {
        "mode": "full",
        "pixel_budget": 64 * 64,
        "dim": 16,
        "p": 4,
        "k": 3,
        "face_crop": 0.8,
        "standardise": True,
        "augment_backend": "tensor",
        "augment": AUG,
    }
    return TrainSettings.model_validate({**base, **kw})


def _encoder(checkpoint: Path, settings: TrainSettings) -> Encoder:
    enc = load_encoder(checkpoint, device="cpu", dtype="float32", pixel_budget=settings.pixel_budget, dim=16)
    enc.face_crop, enc.standardise = settings.face_crop, settings.standardise
    return enc


def _batches(demo_dir: Path, checkpoint: Path, settings: TrainSettings) -> tuple[TensorBatches, PKBatchSampler]:
    ds = PhotoDataset(read_dataset(demo_dir))
    sampler = PKBatchSampler(ds.labels, p=settings.p, k=settings.k, seed=settings.seed)
    return TensorBatches(ds, _encoder(checkpoint, settings), settings), sampler


@pytest.mark.parametrize("standardise", [False, True])
def test_tower_inputs_equal_the_processors_for_the_same_pixels(tiny_checkpoint: Path, standardise: bool) -> None:
    enc = load_encoder(tiny_checkpoint, device="cpu", dtype="float32", pixel_budget=64 * 64, dim=16)
    enc.standardise = standardise
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)) for _ in range(2)]
    want_pv, want_grid = enc.preprocess(images)  # 64 x 64 at a 64 x 64 budget: no resize
    y = torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in images]).float() / 255
    pv, grid = to_tower_inputs(y, enc)
    assert square_side(enc) == 64
    assert torch.equal(grid, want_grid)
    torch.testing.assert_close(pv, want_pv, atol=1e-5, rtol=0)


def test_one_pass_standardisation_equals_the_encoders() -> None:
    grid = torch.tensor([[1, 4, 4]] * 5)
    pv = torch.randn(5 * 16, 3 * 2 * 8 * 8) * 3 + 5
    pv[16:32, : 2 * 64] += 50.0  # the second image's first channel: a strong cast
    torch.testing.assert_close(standardise_square(pv, 5), standardise_channels(pv, grid), atol=1e-5, rtol=0)


def test_views_keep_shapes_and_labels_and_differ_per_epoch_and_seed(demo_dir: Path, tiny_checkpoint: Path) -> None:
    settings = _settings()
    batches, sampler = _batches(demo_dir, tiny_checkpoint, settings)
    first = list(batches.epoch(sampler, 0, 0))
    sampler.set_epoch(0)
    expected = list(sampler)
    assert len(first) == len(expected) == len(sampler)
    n = settings.p * settings.k
    for (pv, grid, labels), indices in zip(first, expected, strict=True):
        # 64 x 64 through 16-pixel patches: 4 x 4 patches per image, each 3 colours x 2 frames x 16 x 16.
        assert pv.shape == (n * 16, 3 * 2 * 16 * 16) and pv.dtype == torch.float32
        assert grid.tolist() == [[1, 4, 4]] * n
        assert labels.tolist() == batches.dataset.labels[indices].tolist()
    again = next(iter(batches.epoch(sampler, 0, 0)))
    torch.testing.assert_close(again[0], first[0][0], atol=0, rtol=0)  # a resume replays the same views
    resumed = next(iter(batches.epoch(sampler, 0, 1)))
    torch.testing.assert_close(resumed[0], first[1][0], atol=0, rtol=0)
    indices = expected[0]
    v0 = batches.views(indices, epoch=0, batch=0)
    assert v0.shape == (n, 3, 64, 64) and 0.0 <= float(v0.min()) and float(v0.max()) <= 1.0
    assert (v0 - batches.views(indices, epoch=1, batch=0)).abs().mean() > 0.02  # another epoch
    other, _ = _batches(demo_dir, tiny_checkpoint, _settings(seed=1))
    assert (v0 - other.views(indices, epoch=0, batch=0)).abs().mean() > 0.02  # another seed
    # A photo repeated within a batch (fewer than K photos) gets its own view each time.
    twice = batches.views([indices[0], indices[0]], epoch=0, batch=0)
    assert (twice[0] - twice[1]).abs().mean() > 0.01


def test_a_batch_embeds_as_its_images_one_by_one(demo_dir: Path, tiny_checkpoint: Path) -> None:
    settings = _settings()
    batches, sampler = _batches(demo_dir, tiny_checkpoint, settings)
    pv, grid, _ = next(iter(batches.epoch(sampler, 0, 0)))
    enc = batches.encoder.eval()
    rows = int(grid[0].prod())
    with torch.inference_mode():
        batched = enc(pv, grid)
        single = torch.cat([enc(pv[i * rows : (i + 1) * rows], grid[i : i + 1]) for i in range(len(grid))])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def _views_and_serving(
    demo_dir: Path, enc: Encoder, settings: TrainSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unaugmented training views of 8 demo photos and serving's input for the same photos, checked equal up to
    resampling: ``(views, tower pixels, grid, serving's pixels)``."""
    images = [load_image(p.path) for p in read_dataset(demo_dir)[:8]]
    crops = torch.stack([context_crop(im, settings.face_crop, 120) for im in images])
    views = augment_views(crops, np.random.default_rng(0), 64, None)
    pv, grid = to_tower_inputs(views, enc)
    want_pv, want_grid = enc.preprocess(images)
    assert torch.equal(grid, want_grid)
    # Standardised values: mean |value| ~0.4; measured mean |difference| 0.014 on 64 demo photos (resampling).
    assert float((pv - want_pv).abs().mean()) < 0.06
    return views, pv, grid, want_pv


def test_an_unaugmented_view_is_what_serving_sees_up_to_resampling(demo_dir: Path, tiny_checkpoint: Path) -> None:
    settings = _settings()
    enc = _encoder(tiny_checkpoint, settings)
    _, pv, grid, want_pv = _views_and_serving(demo_dir, enc, settings)
    with torch.inference_mode():
        cos = (enc.eval()(pv, grid) * enc(want_pv, grid)).sum(-1)
    assert float(cos.min()) > 0.98


def test_tensor_backend_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValidationError, match="face_crop > 0"):
        _settings(face_crop=0.0)
    with pytest.raises(ValidationError, match="hue"):
        _settings(augment=AugmentSettings(hue=0.02, jpeg_p=0.0))
    with pytest.raises(ValidationError, match="tower modes"):
        _settings(mode="head")


def test_cached_validation_scores_equal_embed_and_follow_preprocessing(
    demo_dir: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.evaluator as evaluator_module

    enc = load_encoder(tiny_checkpoint, device="cpu", dtype="float32", pixel_budget=64 * 64, dim=16)
    ds = PhotoDataset(read_dataset(demo_dir))
    decoded: list[Path] = []

    def counting_load(path: Path) -> Image.Image:
        decoded.append(path)
        return load_image(path)

    monkeypatch.setattr(evaluator_module, "load_image", counting_load)
    evaluator = PhotoEvaluator(ds.photos, ds.labels, batch_size=16)
    want = retrieval_scores(enc.embed([load_image(p.path) for p in ds.photos], batch_size=16), ds.labels)
    assert evaluator(enc) == pytest.approx(want, abs=1e-6)
    assert evaluator(enc) == pytest.approx(want, abs=1e-6)
    assert len(decoded) == len(ds)  # decoded once, not per call
    enc.face_crop, enc.standardise = 0.8, True  # other preprocessing: computed afresh
    cropped = retrieval_scores(enc.embed([load_image(p.path) for p in ds.photos], batch_size=16), ds.labels)
    assert evaluator(enc) == pytest.approx(cropped, abs=1e-6)
    assert len(decoded) == 2 * len(ds)
    small = PhotoEvaluator(ds.photos, ds.labels, batch_size=16, cache_bytes=1)  # over the cap: never kept
    small(enc)
    small(enc)
    assert len(decoded) == 4 * len(ds)


def test_vignette_weights_keep_the_face_ellipse_and_grey_the_corners() -> None:
    w = vignette_weights(64, 64, 0.42)
    assert w.shape == (64, 64)
    assert float(w[32, 32]) == 1.0 and float(w[0, 0]) == 0.0 and float(w[63, 63]) == 0.0
    assert float(w[32, 0]) == 0.0  # left edge: 0.49 of the width out, beyond 1.1 x 0.42
    assert float(w[2, 32]) > 0.0 and float(w[0, 32]) < float(w[32, 32])  # taller than wide: top edge partly kept
    torch.testing.assert_close(w, w.flip(0).flip(1))
    with pytest.raises(InvalidInput, match="radius"):
        vignette_weights(64, 64, 0.0)


def test_a_vignetted_view_is_what_serving_sees_up_to_resampling(demo_dir: Path, tiny_checkpoint: Path) -> None:
    settings = _settings(vignette=0.42)
    enc = _encoder(tiny_checkpoint, settings)
    enc.vignette = settings.vignette
    views, _, _, want_pv = _views_and_serving(demo_dir, enc, settings)
    enc.vignette = 0.0
    plain_pv, _ = to_tower_inputs(views, enc)
    assert float((plain_pv - want_pv).abs().mean()) > 0.1  # the vignette is not a no-op
