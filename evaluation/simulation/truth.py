"""``TruthEncoder``: photos embedded as their owners' hidden traits (the pipeline's ceiling)."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from engine.errors import InvalidInput
from engine.settings import Settings
from evaluation.simulation.population import Population


class TruthEncoder:
    """Not a model: embeds each photo as its owner's hidden traits, to measure the pipeline with perfect vectors.

    ``[looks, cos(π q / 2), sin(π q / 2)]`` (q: attractiveness percentile within gender), L2-normalised and
    zero-padded to ``dim``: the cosine of two users is a mix of their looks similarity and the closeness of
    their attractiveness — exactly what the similarity world rewards. With these vectors the engine's result
    is an upper bound for any photo encoder under the product's hypothesis; what is lost is lost downstream
    (filters, ANN, rerank). A photo is recognised by its decoded pixels (decoded as ingestion decodes them).
    """

    encoder_id = "truth-vectors-v1"
    source = "truth"

    def __init__(self, pop_dir: Path, settings: Settings, dim: int = 32) -> None:
        from ingestion.reader import RawPhoto, decode_photo, read_photo

        pop = Population.from_dir(pop_dir, settings)
        if dim < pop.looks.shape[1] + 2:
            raise InvalidInput(f"truth encoder: dim must be at least {pop.looks.shape[1] + 2}")
        self.dim = dim
        q = pop.percentile()
        vec = np.zeros((pop.n, dim), dtype=np.float32)
        d = pop.looks.shape[1]
        vec[:, :d] = pop.looks
        vec[:, d] = np.cos(np.pi * q / 2)
        vec[:, d + 1] = np.sin(np.pi * q / 2)
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
        index = {u: i for i, u in enumerate(pop.user_ids)}
        self._by_pixels: dict[str, np.ndarray] = {}
        root = pop_dir.resolve()
        with (pop_dir / "metadata.csv").open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                raw = read_photo(root, row["image_path"], settings.images)
                if not isinstance(raw, RawPhoto):
                    continue
                dec = decode_photo(raw, settings.images)
                if hasattr(dec, "image") and row["user_id"] in index:
                    self._by_pixels[self._key(dec.image)] = vec[index[row["user_id"]]]

    def _key(self, image: Image.Image) -> str:
        return hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()

    def embed(self, images: Sequence[Image.Image], batch_size: int = 8) -> np.ndarray:
        """(n, dim) float32 unit vectors; raises ``InvalidInput`` for a photo not in the population."""
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for i, im in enumerate(images):
            v = self._by_pixels.get(self._key(im))
            if v is None:
                raise InvalidInput("truth encoder: a photo that is not in the population's metadata.csv")
            out[i] = v
        return out
