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
``skipped`` (ids left out because their image could not be read) and ``summary()``.

Labels come from the CSVs only; files the CSV does not list (the ``*_superpixels.png`` files of
ISIC 2017) are ignored. Nothing under ``root`` is ever written to.

Loading: ``image_size`` resizes on the fly (JPEG draft mode; ``int`` = shorter side, ``(h, w)`` =
exact); with ``cache_dir`` as well, resized copies are stored once in a
:class:`~examples.isic.cache.ResizedImageCache` (built at construction with ``cache_workers``
processes and a progress bar). ``skip_bad=True`` decodes every image at construction and leaves the
unreadable ones out with a logged warning (counted in ``summary()``); otherwise a bad image raises
an error naming the file. ``load_masks=False`` skips reading masks (``has_mask`` False, ``mask``
zeros, the transform sees the image alone): faster where masks are not used (ARL).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from .cache import ImageReadError, ResizedImageCache, check_outside, load_image, load_mask

__all__ = [
    "ISIC2016Dataset",
    "ISIC2017Dataset",
    "ISIC2018Dataset",
    "ISICDataset",
    "ISIC2017_TASKS",
    "read_label_csv",
]

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


def read_label_csv(
    path: str | os.PathLike, columns: Sequence[str], header: bool = True
) -> tuple[list[str], np.ndarray]:
    """Read an ISIC ground-truth CSV: ids and a float ``(N, len(columns)-1)`` value array.

    ``columns`` is the expected header, id column first. With ``header=False`` the file has no
    header row and its columns are taken in that order. Raises ``FileNotFoundError`` /
    ``ValueError`` naming the file and the expected columns.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ground-truth CSV not found: {path} (expected columns: {', '.join(columns)})"
        )
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if header:
        if not rows:
            raise ValueError(f"{path} is empty; expected header {','.join(columns)}")
        found = [c.strip() for c in rows[0]]
        missing = [c for c in columns if c not in found]
        if missing:
            raise ValueError(
                f"{path} has columns {found}; expected {list(columns)} (missing {missing})"
            )
        index = [found.index(c) for c in columns]
        rows = rows[1:]
    else:
        index = list(range(len(columns)))
    ids, values = [], []
    for lineno, row in enumerate(rows, start=2 if header else 1):
        if len(row) <= max(index):
            raise ValueError(
                f"{path} line {lineno} has {len(row)} fields; expected columns {list(columns)}"
            )
        ids.append(row[index[0]].strip())
        values.append([row[i].strip() for i in index[1:]])
    return ids, np.asarray(values, dtype=object).reshape(len(ids), len(columns) - 1)


def _as_float(values: np.ndarray, path: Path, columns: Sequence[str]) -> np.ndarray:
    try:
        out = values.astype(np.float32)
    except ValueError as err:
        raise ValueError(f"{path}: non-numeric value in columns {list(columns)}: {err}") from err
    if not np.isin(out, (0.0, 1.0)).all():
        raise ValueError(f"{path}: columns {list(columns)} must hold 0/1 values")
    return out


def _find_image(folder: Path, image_id: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        p = folder / f"{image_id}{suffix}"
        if p.is_file():
            return p
    return None


class ISICDataset(torch.utils.data.Dataset):
    """Base class: a list of ``(id, image path, mask path or None)`` records plus labels."""

    class_names: tuple[str, ...] = ()
    csv_columns: tuple[str, ...] = ()
    csv_id_column: str = "image"

    def __init__(
        self,
        root: str | os.PathLike,
        ids: list[str],
        image_paths: list[Path | None],
        mask_paths: list[Path | None],
        labels: np.ndarray,
        task: str,
        transform: Callable | None = None,
        cache_dir: str | os.PathLike | None = None,
        image_size: int | tuple[int, int] | None = None,
        cache_workers: int = 0,
        skip_bad: bool = False,
        progress: bool = True,
        load_masks: bool = True,
        source: str = "",
    ) -> None:
        self.root = Path(root)
        self.load_masks = load_masks
        self.task = task
        self.transform = transform
        self.image_size = image_size
        missing = [i for i, p in zip(ids, image_paths, strict=True) if p is None]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} ids listed in {source} have no image file in the data folder "
                f"(first: {', '.join(missing[:5])})"
            )
        self.cache: ResizedImageCache | None = None
        if cache_dir is not None:
            if image_size is None:
                raise ValueError("cache_dir needs image_size (int shorter side or (h, w))")
            check_outside(cache_dir, [self.root])
            self.cache = ResizedImageCache(cache_dir, image_size)
        self.skipped: list[str] = []
        bad: set[int] = set()
        if self.cache is not None:
            failures = self.cache.build(
                zip(image_paths, mask_paths if load_masks else [None] * len(ids), strict=True),
                workers=cache_workers,
                progress=progress,
                skip_errors=skip_bad,
            )
            failed = {f for f, _ in failures}
            bad = {k for k, p in enumerate(image_paths) if str(p) in failed}
            for _, msg in failures:
                log.warning("skipping unreadable file: %s", msg)
        elif skip_bad:
            for k, p in enumerate(image_paths):
                try:
                    load_image(p, 32)
                except ImageReadError as err:
                    log.warning("skipping unreadable image: %s", err)
                    bad.add(k)
        keep = [k for k in range(len(ids)) if k not in bad]
        self.skipped = [ids[k] for k in sorted(bad)]
        self.ids = [ids[k] for k in keep]
        self.image_paths = [image_paths[k] for k in keep]
        self.mask_paths = [mask_paths[k] for k in keep]
        self.labels = labels[keep]

    def __len__(self) -> int:
        return len(self.ids)

    def class_counts(self) -> dict[str, int]:
        """Number of images per class name (multi-label: positives per column)."""
        if self.labels.ndim == 2:
            return {n: int(c) for n, c in zip(self.class_names, self.labels.sum(0), strict=True)}
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {n: int(c) for n, c in zip(self.class_names, counts, strict=True)}

    def summary(self) -> str:
        """One line: size, class counts, masks present and images skipped."""
        masks = sum(p is not None for p in self.mask_paths)
        return (
            f"{type(self).__name__}(task={self.task!r}, split={getattr(self, 'split', '-')!r}): "
            f"{len(self)} images, classes {self.class_counts()}, {masks} with masks, "
            f"{len(self.skipped)} skipped"
        )

    def __repr__(self) -> str:
        return self.summary()

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask | None]:
        """Decoded (resized/cached) image ``(3, H, W)`` uint8 and mask ``(1, H, W)`` 0/1 or None."""
        path = self.image_paths[index]
        mask_path = self.mask_paths[index] if self.load_masks else None
        if self.cache is not None:
            image = self.cache.get_image_tensor(path)
            h, w = image.shape[-2:]
            mask = None if mask_path is None else self.cache.get_mask_tensor(mask_path, (w, h))
        else:
            im = load_image(path, self.image_size)
            image = TF.pil_to_tensor(im)
            mask = None
            if mask_path is not None:
                mask = (TF.pil_to_tensor(load_mask(mask_path, im.size)) > 0).to(torch.uint8)
        return tv_tensors.Image(image), None if mask is None else tv_tensors.Mask(mask)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.load(index)
        has_mask = mask is not None
        if self.transform is not None:
            if has_mask:
                image, mask = self.transform(image, mask)
            else:  # nothing to move along: transform the image alone
                image = self.transform(image)
        image = image.as_subclass(torch.Tensor)
        if not image.is_floating_point():
            image = image.float().div_(255)
        if has_mask:
            mask = mask.as_subclass(torch.Tensor).float()
        else:
            mask = torch.zeros((*image.shape[:-3], 1, *image.shape[-2:]))
        label = self.labels[index]
        label = torch.as_tensor(label, dtype=torch.float32 if label.ndim else torch.long)
        return {
            "image": image,
            "mask": mask,
            "has_mask": torch.tensor(has_mask),
            "label": label,
            "id": self.ids[index],
        }


_2017_PREFIX = {
    "train": "ISIC-2017_Training",
    "val": "ISIC-2017_Validation",
    "test": "ISIC-2017_Test_v2",
}
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
        transform, cache_dir, image_size, cache_workers, skip_bad, progress: see module docstring.
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
        image_size: int | tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> None:
        if split not in _2017_PREFIX:
            raise ValueError(
                f"ISIC2017Dataset split must be one of {list(_2017_PREFIX)}, got {split!r}"
            )
        if task not in ISIC2017_TASKS:
            raise ValueError(
                f"ISIC2017Dataset task must be one of {list(ISIC2017_TASKS)}, got {task!r}"
            )
        root = Path(root)
        prefix = _2017_PREFIX[split]
        csv_path = root / f"{prefix}_Part3_GroundTruth.csv"
        columns = ("image_id", *self.csv_columns)
        ids, raw = read_label_csv(csv_path, columns)
        values = _as_float(raw, csv_path, columns[1:])
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
        images = [_find_image(data_dir, i) for i in ids]
        masks = [_optional(mask_dir / f"{i}_segmentation.png") for i in ids]
        super().__init__(
            root, ids, images, masks, labels, task, transform, cache_dir, image_size,
            source=str(csv_path), **kwargs,
        )  # fmt: skip


def _optional(path: Path) -> Path | None:
    return path if path.is_file() else None


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
        image_size: int | tuple[int, int] | None = None,
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
        self.split = split
        data_dir = root / f"ISBI2016_ISIC_Part3_{name}_Data"
        mask_dir = root / f"ISBI2016_ISIC_Part1_{name}_GroundTruth"
        images = [_find_image(data_dir, i) for i in ids]
        masks = [_optional(mask_dir / f"{i}_Segmentation.png") for i in ids]
        super().__init__(
            root, ids, images, masks, labels, task, transform, cache_dir, image_size,
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
    lesion (no lesion in two splits), see :func:`~examples.isic.splits.lesion_split`. With
    ``split_file`` the split is read from that JSON file when it exists, else computed and saved
    there (atomically); ``split="all"`` takes every image.
    """

    class_names = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
    csv_columns = class_names

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        task: str = "7class",
        transform: Callable | None = None,
        cache_dir: str | os.PathLike | None = None,
        image_size: int | tuple[int, int] | None = None,
        split_seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_file: str | os.PathLike | None = None,
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
        onehot = _as_float(raw, csv_path, columns[1:])
        bad = np.flatnonzero(onehot.sum(1) != 1)
        if len(bad):
            raise ValueError(f"{csv_path}: {len(bad)} rows are not one-hot (first: {ids[bad[0]]})")
        labels = onehot.argmax(1).astype(np.int64)
        self.split = split
        groups = read_lesion_groups(root, ids)
        if split != "all":
            assignment = get_or_make_split(
                ids, labels, [groups[i] for i in ids], split_seed, val_fraction, test_fraction, split_file,
                data_root=root,
            )  # fmt: skip
            keep = [k for k, i in enumerate(ids) if assignment[i] == split]
            ids, labels = [ids[k] for k in keep], labels[keep]
        data_dir = root / "ISIC2018_Task3_Training_Input"
        mask_dir = root / "ISIC2018_Task1_Training_GroundTruth"
        images = [_find_image(data_dir, i) for i in ids]
        masks = [_optional(mask_dir / f"{i}_segmentation.png") for i in ids]
        super().__init__(
            root, ids, images, masks, labels, task, transform, cache_dir, image_size,
            source=str(csv_path), **kwargs,
        )  # fmt: skip
        self.lesion_ids = [groups[i] for i in self.ids]  # lesion of each image, for grouping
