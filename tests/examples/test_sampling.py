"""Class-balancing samplers: oversampling, weighted sampling, DDP shards, epochs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from examples.isic import (
    OversamplingSampler,
    WeightedSampler,
    class_balanced_weights,
    oversample_indices,
)

LABELS = np.array([0, 0, 0, 1, 0, 1, 2, 0, 0, 1])


def test_oversample_indices_counts():
    idx = oversample_indices(LABELS, repeats={1: 4})
    counts = Counter(idx.tolist())
    assert all(counts[i] == (4 if y == 1 else 1) for i, y in enumerate(LABELS))
    assert len(idx) == 7 + 3 * 4
    idx60 = oversample_indices(LABELS, repeats={1: 120}, base_repeats=60)
    assert len(idx60) == 7 * 60 + 3 * 120
    assert len(oversample_indices(LABELS, repeats={2: 0})) == 9
    with pytest.raises(ValueError, match=">= 0"):
        oversample_indices(LABELS, repeats={1: -1})
    with pytest.raises(ValueError, match=r"labels\[:, 0\]"):
        oversample_indices(np.zeros((4, 2)))


def test_oversampling_sampler_epochs_and_seed():
    s = OversamplingSampler(LABELS, repeats={1: 4}, seed=3)
    a = list(s)
    assert sorted(a) == sorted(oversample_indices(LABELS, {1: 4}).tolist()) and len(s) == 19
    assert a == list(s)  # same epoch, same order
    s.set_epoch(1)
    assert a != list(s) and sorted(a) == sorted(s)
    assert a == list(OversamplingSampler(LABELS, repeats={1: 4}, seed=3))
    assert list(OversamplingSampler(LABELS, shuffle=False)) == list(range(10))


@pytest.mark.parametrize("drop_last", [False, True])
def test_oversampling_sampler_ddp_shards(drop_last):
    world = 4
    shards = [
        list(
            OversamplingSampler(
                LABELS, {1: 4}, seed=0, num_replicas=world, rank=r, drop_last=drop_last
            )
        )
        for r in range(world)
    ]
    lengths = {len(sh) for sh in shards}
    assert lengths == {
        len(OversamplingSampler(LABELS, {1: 4}, num_replicas=world, rank=0, drop_last=drop_last))
    }
    full = list(OversamplingSampler(LABELS, {1: 4}, seed=0))
    merged = [x for group in zip(*shards, strict=True) for x in group]
    if drop_last:
        assert len(merged) == 16 and merged == full[:16]
    else:  # padded with the first entries so every rank has 5
        assert len(merged) == 20 and merged == full + full[:1]
    with pytest.raises(ValueError, match="rank"):
        OversamplingSampler(LABELS, num_replicas=2, rank=2)


def test_class_balanced_weights_and_weighted_sampler():
    w = class_balanced_weights(LABELS)
    np.testing.assert_allclose(w[LABELS == 0], 1 / 6)
    np.testing.assert_allclose(w[LABELS == 2], 1.0)
    per_class = np.bincount(LABELS, weights=w)
    np.testing.assert_allclose(per_class, 1.0)
    s = WeightedSampler(w, num_samples=30000, seed=0)
    draws = np.array(list(s))
    freq = np.bincount(LABELS[draws], minlength=3) / len(draws)
    np.testing.assert_allclose(freq, 1 / 3, atol=0.02)
    first = draws.copy()
    s.set_epoch(1)
    assert not np.array_equal(first, np.array(list(s)))
    s.set_epoch(0)
    np.testing.assert_array_equal(first, np.array(list(s)))


def test_weighted_sampler_ddp_and_errors():
    w = class_balanced_weights(LABELS, power=0.5)
    shards = [list(WeightedSampler(w, 11, seed=5, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(sh) for sh in shards] == [4, 4, 4]
    full = list(WeightedSampler(w, 11, seed=5))
    assert [x for group in zip(*shards, strict=True) for x in group] == full + full[:1]
    no_repl = list(WeightedSampler(np.ones(10), 10, replacement=False))
    assert sorted(no_repl) == list(range(10))
    with pytest.raises(ValueError, match="without replacement"):
        WeightedSampler(np.array([1.0, 0.0, 1.0]), 3, replacement=False)
    with pytest.raises(ValueError, match="weights"):
        WeightedSampler(np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="weights"):
        WeightedSampler(torch.zeros(3))


def test_samplers_in_a_dataloader():
    data = torch.utils.data.TensorDataset(torch.arange(10))
    loader = torch.utils.data.DataLoader(
        data, batch_size=4, sampler=OversamplingSampler(LABELS, {1: 4})
    )
    seen = torch.cat([b[0] for b in loader])
    assert Counter(seen.tolist())[3] == 4 and len(seen) == 19
