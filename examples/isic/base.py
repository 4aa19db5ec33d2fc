"""The dataset base class and the CSV/image-file helpers shared by the ISIC releases.

See ``data.py`` for the item format and the per-release classes.
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

__all__ = ["ISICDataset", "read_label_csv"]

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
        self.skipped: list[str] = [ids[k] for k in sorted(bad)]
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


def _optional(path: Path) -> Path | None:
    return path if path.is_file() else None
