"""ISIC datasets read from the official folder and CSV layouts.

    >>> ds = ISIC2017Dataset(root, split="train", task="melanoma")       # doctest: +SKIP
    >>> item = ds[0]
    >>> item["image"].shape, item["mask"].shape, item["has_mask"], item["label"], item["id"]
    (torch.Size([3, H, W]), torch.Size([1, H, W]), tensor(True), tensor(0), 'ISIC_0000000')

Item (a dict):

- ``image``: float tensor ``(3, H, W)`` in [0, 1] when ``transform`` is None, else what the
  transform returns (e.g. ``(9, 3, S, S)`` for the ARL 9-view test transform).
- ``mask``: float tensor ``(1, H, W)`` in {0, 1}, transformed together with the image; all zeros
  when the image has no lesion mask.
- ``has_mask``: bool tensor, False when the mask is absent (so losses can exclude the sample).
- ``label``: long scalar for single-label tasks, float vector for multi-label tasks (``"both"``).
- ``id``: the ISIC image id (``"ISIC_0000000"``).

The transform is called as ``image, mask = transform(image, mask)`` with ``image`` a
``tv_tensors.Image`` (uint8, 3xHxW) and ``mask`` a ``tv_tensors.Mask`` (uint8 0/1, 1xHxW), so any
``torchvision.transforms.v2`` pipeline moves both together (see ``transforms.py``).

Every dataset exposes ``ids`` (list of str), ``labels`` (numpy: int64 ``(N,)`` or float32
``(N, K)`` for ``"both"``), ``class_names``, ``task``, ``csv_columns`` and ``csv_id_column`` (the
official ground-truth columns, for :func:`~examples.isic.metrics.write_predictions_csv`),
``skipped`` (ids left out because their image could not be read), ``summary()`` and
``subset(indices)`` (a dataset of the same class holding those images; ``limit``, ``sample`` and
``holdout`` choose them by rule, see :class:`~examples.isic.data.base.ISICDataset`).

Labels come from the CSVs only; files the CSV does not list (the ``*_superpixels.png`` files of
ISIC 2017) are ignored. Nothing under ``root`` is ever written to.

Loading: ``load_size`` (the scripts' ``--load-size``; the network input size is the transforms'
business) resizes on decode (JPEG draft mode; ``int`` = shorter side, ``(h, w)`` = exact); with
``cache_dir`` as well, resized copies are stored once in a
:class:`~examples.isic.data.cache.ResizedImageCache` (built at construction with ``cache_workers``
processes and a progress bar). ``skip_bad=True`` decodes every image at construction and leaves the
unreadable ones out with a logged warning (counted in ``summary()``); otherwise a bad image raises
an error naming the file. ``load_masks=False`` skips reading masks (``has_mask`` False, ``mask``
zeros, the transform sees the image alone): faster where masks are not used (ARL).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .base import ISICDataset
from .layout import (
    ISIC2017_PREFIX,
    ISIC2018_CLASSES,
    binary_columns,
    find_image,
    optional_file,
    read_label_csv,
    unique_rows,
)

__all__ = [
    "ISIC2016Dataset",
    "ISIC2017Dataset",
    "ISIC2018Dataset",
    "ISICDataset",
    "ISIC2017_TASKS",
    "read_label_csv",
]

ISIC2017_TASKS = ("melanoma", "seborrheic_keratosis", "3class", "both")


class ISIC2017Dataset(ISICDataset):
    """ISIC 2017 part 3 (lesion classification).

    Args:
        root: folder holding ``ISIC-2017_{Training,Validation,Test_v2}_Data/``,
            ``..._Part1_GroundTruth/`` (masks, optional) and ``..._Part3_GroundTruth.csv``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        task: ``"melanoma"`` (melanoma vs rest, classes ``("other", "melanoma")``),
            ``"seborrheic_keratosis"`` (``("other", "seborrheic_keratosis")``), ``"3class"``
            (``("nevus", "melanoma", "seborrheic_keratosis")``; label 0/1/2) or ``"both"`` (float
            vector ``[melanoma, seborrheic_keratosis]``, the official prediction columns).
        transform, cache_dir, load_size, cache_workers, skip_bad, progress: see module docstring.
    """

    csv_columns = ("melanoma", "seborrheic_keratosis")
    csv_id_column = "image_id"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        task: str = "melanoma",
        transform: Callable | None = None,
        cache_dir: str | os.PathLike | None = None,
        load_size: int | tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> None:
        if split not in ISIC2017_PREFIX:
            raise ValueError(
                f"ISIC2017Dataset split must be one of {list(ISIC2017_PREFIX)}, got {split!r}"
            )
        if task not in ISIC2017_TASKS:
            raise ValueError(
                f"ISIC2017Dataset task must be one of {list(ISIC2017_TASKS)}, got {task!r}"
            )
        root = Path(root)
        prefix = ISIC2017_PREFIX[split]
        csv_path = root / f"{prefix}_Part3_GroundTruth.csv"
        columns = ("image_id", *self.csv_columns)
        ids, raw = read_label_csv(csv_path, columns)
        values = binary_columns(raw, csv_path, columns[1:])
        ids, values = unique_rows(ids, values, csv_path, kwargs.get("skip_bad", False))
        both = np.flatnonzero(values.sum(1) > 1)
        if len(both):
            raise ValueError(
                f"{csv_path}: {len(both)} rows are both melanoma and seborrheic keratosis "
                f"(first: {ids[both[0]]})"
            )
        if task == "both":
            labels, self.class_names = values, ("melanoma", "seborrheic_keratosis")
        elif task == "3class":
            labels = (values[:, 0] + 2 * values[:, 1]).astype(np.int64)
            self.class_names = ("nevus", "melanoma", "seborrheic_keratosis")
        else:
            labels = values[:, self.csv_columns.index(task)].astype(np.int64)
            self.class_names = ("other", task)
        self.split = split
        data_dir, mask_dir = root / f"{prefix}_Data", root / f"{prefix}_Part1_GroundTruth"
        images = [find_image(data_dir, i) for i in ids]
        masks = [optional_file(mask_dir / f"{i}_segmentation.png") for i in ids]
        super().__init__(
            root, ids, images, masks, labels, task, transform, cache_dir, load_size,
            source=str(csv_path), **kwargs,
        )  # fmt: skip


class ISIC2016Dataset(ISICDataset):
    """ISBI 2016 part 3 (malignant vs benign; classes ``("benign", "malignant")``).

    Layout: ``ISBI2016_ISIC_Part3_{Training,Test}_Data/`` and
    ``ISBI2016_ISIC_Part3_{Training,Test}_GroundTruth.csv`` without header (training rows
    ``ISIC_0000000,benign|malignant``; test rows ``ISIC_0000000,0|1``). Masks are read from
    ``ISBI2016_ISIC_Part1_{Training,Test}_GroundTruth/<id>_Segmentation.png`` when present.
    """

    class_names = ("benign", "malignant")
    csv_columns = ("malignant",)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        task: str = "malignant",
        transform: Callable | None = None,
        cache_dir: str | os.PathLike | None = None,
        load_size: int | tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> None:
        names = {"train": "Training", "test": "Test"}
        if split not in names:
            raise ValueError(f"ISIC2016Dataset split must be one of {list(names)}, got {split!r}")
        if task != "malignant":
            raise ValueError(f"ISIC2016Dataset task must be 'malignant', got {task!r}")
        root, name = Path(root), names[split]
        csv_path = root / f"ISBI2016_ISIC_Part3_{name}_GroundTruth.csv"
        ids, raw = read_label_csv(csv_path, ("image_id", "label"), header=False)
        if ids and ids[0].lower() in ("image_id", "image", "isic_id"):
            ids, raw = ids[1:], raw[1:]  # tolerate a header row
        mapping = {"benign": 0, "malignant": 1, "0": 0, "1": 1, "0.0": 0, "1.0": 1}
        bad = [v for v in raw[:, 0] if v.lower() not in mapping]
        if bad:
            raise ValueError(
                f"{csv_path}: labels must be benign/malignant or 0/1, found {sorted(set(bad))[:5]}"
            )
        labels = np.array([mapping[v.lower()] for v in raw[:, 0]], dtype=np.int64)
        ids, labels = unique_rows(ids, labels, csv_path, kwargs.get("skip_bad", False))
        self.split = split
        data_dir = root / f"ISBI2016_ISIC_Part3_{name}_Data"
        mask_dir = root / f"ISBI2016_ISIC_Part1_{name}_GroundTruth"
        images = [find_image(data_dir, i) for i in ids]
        masks = [optional_file(mask_dir / f"{i}_Segmentation.png") for i in ids]
        super().__init__(
            root, ids, images, masks, labels, task, transform, cache_dir, load_size,
            source=str(csv_path), **kwargs,
        )  # fmt: skip


class ISIC2018Dataset(ISICDataset):
    """ISIC 2018 task 3 (HAM10000, 7 classes ``MEL NV BCC AKIEC BKL DF VASC``; task ``"7class"``).

    Layout: ``ISIC2018_Task3_Training_Input/``,
    ``ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv`` (one-hot),
    lesion masks ``ISIC2018_Task1_Training_GroundTruth/<id>_segmentation.png`` where present, and
    the lesion grouping from ``HAM10000_metadata.csv`` (root) or
    ``ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_LesionGroupings.csv``.

    There is no official validation split: ``split`` selects from a stratified split grouped by
    lesion (no lesion in two splits), see :func:`~examples.isic.data.splits.lesion_split`. With
    ``split_file`` the split is read from that JSON file when it exists, else computed and saved
    there (atomically); a file made with another seed or other fractions is recomputed, or with
    ``split_mismatch="error"`` refused (``ValueError``); ``split="all"`` takes every image.
    """

    class_names = ISIC2018_CLASSES
    csv_columns = class_names
    per_image = (*ISICDataset.per_image, "lesion_ids")

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        task: str = "7class",
        transform: Callable | None = None,
        cache_dir: str | os.PathLike | None = None,
        load_size: int | tuple[int, int] | None = None,
        split_seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_file: str | os.PathLike | None = None,
        split_mismatch: str = "replace",
        **kwargs: Any,
    ) -> None:
        from .splits import SPLITS, get_or_make_split, read_lesion_groups

        if split not in (*SPLITS, "all"):
            raise ValueError(
                f"ISIC2018Dataset split must be one of {[*SPLITS, 'all']}, got {split!r}"
            )
        if task != "7class":
            raise ValueError(f"ISIC2018Dataset task must be '7class', got {task!r}")
        root = Path(root)
        gt_dir = root / "ISIC2018_Task3_Training_GroundTruth"
        csv_path = gt_dir / "ISIC2018_Task3_Training_GroundTruth.csv"
        columns = ("image", *self.class_names)
        ids, raw = read_label_csv(csv_path, columns)
        onehot = binary_columns(raw, csv_path, columns[1:])
        ids, onehot = unique_rows(ids, onehot, csv_path, kwargs.get("skip_bad", False))
        bad = np.flatnonzero(onehot.sum(1) != 1)
        if len(bad):
            raise ValueError(f"{csv_path}: {len(bad)} rows are not one-hot (first: {ids[bad[0]]})")
        labels = onehot.argmax(1).astype(np.int64)
        self.split = split
        groups = read_lesion_groups(root, ids)
        if split != "all":
            assignment = get_or_make_split(
                ids, labels, [groups[i] for i in ids], split_seed, val_fraction, test_fraction, split_file,
                data_root=root, on_mismatch=split_mismatch,
            )  # fmt: skip
            keep = [k for k, i in enumerate(ids) if assignment[i] == split]
            ids, labels = [ids[k] for k in keep], labels[keep]
        data_dir = root / "ISIC2018_Task3_Training_Input"
        mask_dir = root / "ISIC2018_Task1_Training_GroundTruth"
        images = [find_image(data_dir, i) for i in ids]
        masks = [optional_file(mask_dir / f"{i}_segmentation.png") for i in ids]
        super().__init__(
            root, ids, images, masks, labels, task, transform, cache_dir, load_size,
            source=str(csv_path), **kwargs,
        )  # fmt: skip
        self.lesion_ids = [groups[i] for i in self.ids]  # lesion of each image, for grouping
