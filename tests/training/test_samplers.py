from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InvalidInput
from training.data import Photo, PhotoDataset, split_by_identity
from training.samplers import PKBatchSampler


def _labels() -> np.ndarray:
    # 13 identities with 1..4 photos each (three of them single-photo people).
    return np.repeat(np.arange(13), [1 + i % 4 for i in range(13)])


def test_every_batch_is_p_identities_times_k_photos() -> None:
    labels = _labels()
    sampler = PKBatchSampler(labels, p=4, k=3, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 13 // 4
    for batch in batches:
        assert len(batch) == 12
        per = Counter(int(labels[i]) for i in batch)
        assert len(per) == 4 and set(per.values()) == {3}
        # K consecutive items per identity.
        assert all(len({int(labels[i]) for i in batch[j : j + 3]}) == 1 for j in range(0, 12, 3))
    # Each identity at most once per epoch; no photo repeated unless its person has fewer than K.
    seen = [int(labels[b[j]]) for b in batches for j in range(0, 12, 3)]
    assert len(seen) == len(set(seen))
    for batch in batches:
        for j in range(0, 12, 3):
            group = batch[j : j + 3]
            n_photos = int((labels == labels[group[0]]).sum())
            assert len(set(group)) == min(3, n_photos)


def test_single_photo_identities_appear_as_their_own_positives() -> None:
    labels = _labels()
    sampler = PKBatchSampler(labels, p=13, k=2, seed=1)
    (batch,) = list(sampler)
    single = int(np.flatnonzero(labels == 0)[0])  # identity 0 has one photo
    assert batch.count(single) == 2


def test_batches_depend_only_on_seed_and_epoch() -> None:
    labels = _labels()
    a, b = PKBatchSampler(labels, 3, 2, seed=5), PKBatchSampler(labels, 3, 2, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)


def test_sampler_over_a_train_split_never_sees_a_validation_person() -> None:
    photos = [Photo(f"u{i}", Path(f"/p/u{i}_{n}.jpg")) for i in range(20) for n in range(1 + i % 3)]
    train, val = split_by_identity(photos, val_identities=5, seed=0)
    ds = PhotoDataset(train)
    val_ids = {p.identity for p in val}
    sampler = PKBatchSampler(ds.labels, p=4, k=2, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for batch in sampler:
            assert len(batch) == 8
            assert not {ds.photos[i].identity for i in batch} & val_ids


@pytest.mark.parametrize(("p", "k", "message"), [(1, 2, "P"), (2, 1, "K"), (20, 2, "only 13")])
def test_bad_arguments_are_named(p: int, k: int, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        PKBatchSampler(_labels(), p=p, k=k)
