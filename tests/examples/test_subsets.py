"""Dataset subsets: subset(indices), limit, sample and holdout keep every per-image attribute,
the class counts and the summary consistent, and choose the same images for the same settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.isic import ISIC2017Dataset, ISIC2018Dataset, make_synthetic_isic2017
from examples.isic.data.synthetic2018 import make_synthetic_isic2018

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_synthetic_isic2017(
        tmp_path_factory.mktemp("syn") / "isic2017", n_train=30, n_val=9, n_test=9, size=48
    )


@pytest.fixture(scope="module")
def train(synth) -> ISIC2017Dataset:
    return ISIC2017Dataset(synth, "train", task="3class")


def test_subset_takes_every_per_image_attribute_at_the_indices(train):
    idx = [5, 0, 17, 3, 29]
    sub = train.subset(idx)
    assert type(sub) is ISIC2017Dataset and len(sub) == 5 and len(train) == 30
    assert sub.ids == [train.ids[i] for i in idx]
    assert sub.image_paths == [train.image_paths[i] for i in idx]
    assert sub.mask_paths == [train.mask_paths[i] for i in idx]
    np.testing.assert_array_equal(sub.labels, train.labels[idx])
    expected = np.bincount(train.labels[idx], minlength=3)
    assert list(sub.class_counts().values()) == expected.tolist()
    assert sub.class_names == train.class_names and sub.split == "train" and sub.task == "3class"
    item, ref = sub[1], train[0]
    assert item["id"] == ref["id"] and int(item["label"]) == int(ref["label"])
    assert torch.equal(item["image"], ref["image"]) and torch.equal(item["mask"], ref["mask"])
    masks = sum(p is not None for p in sub.mask_paths)
    assert sub.summary() == (
        f"ISIC2017Dataset(task='3class', split='train'): 5 images, classes "
        f"{sub.class_counts()}, {masks} with masks, 0 skipped (subset: 5 of 30)"
    )
    assert train.summary().endswith(" 0 skipped")  # the parent is untouched
    assert train.selections == [] and len(train.ids) == 30


def test_subset_accepts_arrays_tensors_ranges_and_nothing(train):
    assert train.subset(np.array([4, 2], dtype=np.int32)).ids == [train.ids[4], train.ids[2]]
    assert train.subset(torch.tensor([7])).ids == [train.ids[7]]
    assert train.subset(range(28, 30)).ids == train.ids[28:]
    empty = train.subset([])
    assert len(empty) == 0 and empty.labels.shape == (0,) and "0 images" in empty.summary()


@pytest.mark.parametrize(
    ("indices", "error", "match"),
    [
        ([3, -1], ValueError, r"index -1 \(position 1\) is negative"),
        ([0, 30], ValueError, r"index 30 \(position 1\) is out of range for a dataset of 30"),
        ([2, 5, 2, 5], ValueError, r"repeat 2 images \(first: index 2\)"),
        ([[0, 1]], ValueError, r"one-dimensional, got shape \(1, 2\)"),
        ([1.0, 2.0], TypeError, "must be ints, got float64"),
        ([True, False], TypeError, "must be ints, got bool"),
        ("12", TypeError, "sequence of ints"),
        (3, TypeError, "sequence of ints"),
    ],
)
def test_subset_rejects_bad_indices(train, indices, error, match):
    with pytest.raises(error, match=match):
        train.subset(indices)


def test_limit_takes_the_first_images_of_each_class_in_dataset_order(train):
    labels = train.labels
    for n in (1, 6, 7, 100):
        per = max(1, n // 3)
        expected = sorted(k for c in range(3) for k in np.flatnonzero(labels == c)[:per])
        lim = train.limit(n)
        assert lim.ids == [train.ids[k] for k in expected]
        counts = np.bincount(labels, minlength=3)
        assert list(lim.class_counts().values()) == np.minimum(counts, per).tolist()
        assert lim.summary().endswith(f"(limit {n}: {len(expected)} of 30)")
    assert len(train.limit(6)) == 6 and train.limit(6).ids == train.limit(6).ids
    with pytest.raises(ValueError, match="limit needs a number of images >= 1, got 0"):
        train.limit(0)


def test_limit_of_multi_label_rows_counts_each_row_as_a_class(synth, train):
    both = ISIC2017Dataset(synth, "train", task="both")
    limited = both.limit(6)
    assert limited.ids == train.limit(6).ids  # rows (0,0) (1,0) (0,1) = the 3 classes
    positions = [both.ids.index(i) for i in limited.ids]
    np.testing.assert_array_equal(limited.labels, both.labels[positions])
    assert limited.labels.shape == (6, 2) and limited.class_counts() == {
        "melanoma": 2, "seborrheic_keratosis": 2
    }  # fmt: skip


def test_sample_draws_with_the_seed_and_keeps_dataset_order(train):
    keep = np.sort(np.random.default_rng(3).permutation(30)[:10])
    sample = train.sample(10, seed=3)
    assert sample.ids == [train.ids[k] for k in keep]
    np.testing.assert_array_equal(sample.labels, train.labels[keep])
    assert sample.ids != train.sample(10, seed=4).ids
    assert train.sample(30, seed=0).ids == train.ids == train.sample(99, seed=5).ids
    assert sample.summary().endswith("(sample 10, seed 3: 10 of 30)")
    with pytest.raises(ValueError, match="sample needs a number of images >= 1"):
        train.sample(0, seed=0)


def test_holdout_parts_split_each_class_by_the_fraction(train):
    held = train.holdout(0.2, seed=1, part="held_out")
    rest = train.holdout(0.2, seed=1, part="rest")
    assert sorted(held.ids + rest.ids) == sorted(train.ids) and not set(held.ids) & set(rest.ids)
    counts = np.bincount(train.labels, minlength=3)
    expected = [max(1, round(0.2 * c)) for c in counts]
    assert list(held.class_counts().values()) == expected
    rng = np.random.default_rng(1)  # the rule: a seeded permutation of each class, in class order
    picks = np.sort(np.concatenate(
        [rng.permutation(np.flatnonzero(train.labels == c))[:e] for c, e in enumerate(expected)]
    ))  # fmt: skip
    assert held.ids == [train.ids[k] for k in picks]
    assert rest.ids == [i for i in train.ids if i not in held.ids]  # dataset order
    assert held.summary().endswith(f"(held-out 0.2, seed 1: {sum(expected)} of 30)")
    assert len(train.holdout(0.0, seed=1, part="held_out")) == 0
    with pytest.raises(ValueError, match="part must be 'held_out' or 'rest', got 'val'"):
        train.holdout(0.2, seed=1, part="val")
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\], got 1.5"):
        train.holdout(1.5, seed=1, part="rest")


def test_subsets_chain_and_name_each_step(train):
    rest = train.holdout(0.2, seed=0, part="rest")
    lim = rest.limit(6)
    assert set(lim.ids) <= set(rest.ids) and len(lim) == 6
    assert lim.summary().endswith(f"(rest after holding out 0.2, seed 0: {len(rest)} of 30; "
                                  f"limit 6: 6 of {len(rest)})")  # fmt: skip
    again = lim.subset([1, 0], why="two")
    assert again.ids == [lim.ids[1], lim.ids[0]] and again.summary().endswith("two: 2 of 6)")


def test_subset_keeps_the_skipped_images_of_the_split(synth, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(synth, root)
    ds = ISIC2017Dataset(root, "val", task="3class")
    bad = ds.image_paths[4]
    bad.write_bytes(bad.read_bytes()[:300])
    skipping = ISIC2017Dataset(root, "val", task="3class", skip_bad=True)
    sub = skipping.subset([0, 1])
    assert sub.skipped == [ds.ids[4]] and sub.bad_files == skipping.bad_files
    assert "2 images" in sub.summary() and "1 skipped" in sub.summary()
    sub.bad_files.append(("x", "", ""))
    sub.skipped.append("x")
    assert len(skipping.bad_files) == 1 and skipping.skipped == [ds.ids[4]]  # not shared


def test_2018_subset_keeps_lesion_ids(tmp_path):
    root = make_synthetic_isic2018(tmp_path / "isic2018", n=40, size=32)
    ds = ISIC2018Dataset(root, "all")
    idx = [9, 2, 31, 0]
    sub = ds.subset(idx)
    assert type(sub) is ISIC2018Dataset
    assert sub.lesion_ids == [ds.lesion_ids[i] for i in idx] and sub.ids == [ds.ids[i] for i in idx]
    sample = ds.sample(12, seed=0)
    assert sample.lesion_ids == [ds.lesion_ids[ds.ids.index(i)] for i in sample.ids]
