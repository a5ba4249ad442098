"""P x K batch sampler: every batch holds P identities with K photos each, so every anchor has positives.

pytorch-metric-learning's ``MPerClassSampler`` does the same draw, but from a process-global NumPy state and
with asserts on its input; ours is seeded per epoch (so a resumed run replays the same batches) and checks
its arguments with clear errors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from engine.errors import InvalidInput


class PKBatchSampler:
    """Yields lists of dataset indices, ``P * K`` long, grouped by identity (K consecutive items each).

    An identity with fewer than K photos repeats its photos (each repeat gets its own augmentation, so a
    one-photo person is the positive of its own augmented views and still a negative for everyone else).
    Photos are drawn without replacement while an identity has enough of them.

    Each epoch visits every identity once, in a seeded random order, ``len(self)`` batches long (the last
    incomplete group of identities is dropped). Batch order depends only on ``(seed, epoch)``.

    Args:
        labels: (n,) integer identity label of each dataset item.
        p: identities per batch (>= 2, so there are negatives).
        k: photos per identity (>= 2, so there are positives).
        seed: base seed.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, p: int, k: int, seed: int = 0) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0:
            raise InvalidInput(f"labels must be a non-empty 1-d sequence, got shape {labels.shape}")
        if p < 2:
            raise InvalidInput(f"P (identities per batch) must be >= 2, got {p}")
        if k < 2:
            raise InvalidInput(f"K (photos per identity) must be >= 2, got {k}")
        self.identities = np.unique(labels)
        if len(self.identities) < p:
            raise InvalidInput(f"P={p} identities per batch, but the data has only {len(self.identities)}")
        self.by_identity = {int(i): np.flatnonzero(labels == i) for i in self.identities}
        self.p, self.k, self.seed = p, k, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields (call before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.identities) // self.p

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.identities)
        for b in range(len(self)):
            batch: list[int] = []
            for identity in order[b * self.p : (b + 1) * self.p]:
                pool = self.by_identity[int(identity)]
                if len(pool) >= self.k:
                    chosen = rng.choice(pool, size=self.k, replace=False)
                else:
                    # All photos once, then repeats; shuffled so the repeats are not always the same ones.
                    chosen = np.concatenate([pool, rng.choice(pool, size=self.k - len(pool), replace=True)])
                    chosen = rng.permutation(chosen)
                batch.extend(int(i) for i in chosen)
            yield batch
