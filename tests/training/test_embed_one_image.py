"""Encoder.embed accepts one image (as sentence-transformers' ``encode`` does) as well as a list."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image


def test_embed_one_image_gives_one_vector_equal_to_the_list_form(tiny_encoder: Any) -> None:
    im = Image.new("RGB", (96, 80), (200, 40, 90))
    one = tiny_encoder.embed(im)
    assert one.shape == (tiny_encoder.dim,) and one.dtype == np.float32
    listed = tiny_encoder.embed([im])
    assert listed.shape == (1, tiny_encoder.dim)
    assert np.allclose(one, listed[0], atol=1e-6)
