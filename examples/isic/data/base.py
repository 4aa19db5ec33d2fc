"""The dataset base class shared by the ISIC releases.

See ``datasets.py`` for the item format and the per-release classes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from .cache import ResizedImageCache, check_outside
from .images import ImageReadError, load_image, load_mask, verify_files

__all__ = ["ISICDataset"]

log = logging.getLogger(__name__)


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
        load_size: int | tuple[int, int] | None = None,
        cache_workers: int = 0,
        skip_bad: bool = False,
        progress: bool = True,
        load_masks: bool = True,
        source: str = "",
        verify: bool | None = None,
    ) -> None:
        self.root = Path(root)
        self.load_masks = load_masks
        self.task = task
        self.transform = transform
        self.load_size = load_size
        missing = [k for k, p in enumerate(image_paths) if p is None]
        if missing and not skip_bad:
            raise FileNotFoundError(
                f"{len(missing)} ids listed in {source} have no image file in the data folder "
                f"(first: {', '.join(ids[k] for k in missing[:5])}); skip_bad=True (--skip-bad) "
                "leaves them out"
            )
        self.cache: ResizedImageCache | None = None
        if cache_dir is not None:
            if load_size is None:
                raise ValueError("cache_dir needs load_size (int shorter side or (h, w))")
            check_outside(cache_dir, [self.root])
            self.cache = ResizedImageCache(cache_dir, load_size)
        # (id, file, reason) of every image left out
        self.bad_files: list[tuple[str, str, str]] = [
            (ids[k], "", f"no image file for {ids[k]} in the data folder") for k in missing
        ]
        present = [k for k, p in enumerate(image_paths) if p is not None]
        items = [(image_paths[k], mask_paths[k] if load_masks else None) for k in present]
        failures: list[tuple[str, str]] = []
        if self.cache is not None:  # building the cache decodes every file
            failures = self.cache.build(
                items, workers=cache_workers, progress=progress, skip_errors=True
            )
        elif skip_bad if verify is None else verify:
            failures = verify_files(items, workers=cache_workers, progress=progress)
        if failures and not skip_bad:
            shown = "; ".join(msg for _, msg in failures[:3])
            raise ImageReadError(
                f"{len(failures)} of {len(ids)} images of {source or self.root} cannot be read "
                f"({shown}{'; ...' if len(failures) > 3 else ''}); skip_bad=True (--skip-bad) "
                "leaves them out"
            )
        failed = dict(failures)
        bad = set(missing)
        for k in present:
            reason = failed.get(str(image_paths[k]))
            if reason is not None:
                bad.add(k)
                self.bad_files.append((ids[k], str(image_paths[k]), reason))
        for _, _, reason in self.bad_files:
            log.warning("skipping: %s", reason)
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
            im = load_image(path, self.load_size)
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
