"""The dataset base class shared by the ISIC releases.

See ``datasets.py`` for the item format and the per-release classes.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from .cache import ResizedImageCache, check_outside
from .images import ImageReadError, load_image, load_mask, verify_files
from .subsets import check_indices, first_per_class, random_indices, stratified_holdout

__all__ = ["ISICDataset"]

log = logging.getLogger(__name__)
D = TypeVar("D", bound="ISICDataset")


class ISICDataset(torch.utils.data.Dataset):
    """Base class: a list of ``(id, image path, mask path or None)`` records plus labels.

    :meth:`subset` (and :meth:`limit`, :meth:`sample`, :meth:`holdout`, built on it) gives a
    dataset of the same class holding some of the images.
    """

    class_names: tuple[str, ...] = ()
    # attributes holding one entry per image, in dataset order (what subset() selects from)
    per_image: tuple[str, ...] = ("ids", "image_paths", "mask_paths", "labels")
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
        self.selections: list[str] = []  # how a subset was chosen, for summary()

    def __len__(self) -> int:
        return len(self.ids)

    def class_counts(self) -> dict[str, int]:
        """Number of images per class name (multi-label: positives per column)."""
        if self.labels.ndim == 2:
            return {n: int(c) for n, c in zip(self.class_names, self.labels.sum(0), strict=True)}
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {n: int(c) for n, c in zip(self.class_names, counts, strict=True)}

    def summary(self) -> str:
        """One line: size, class counts, masks present, images skipped and, for a subset, how it
        was chosen."""
        masks = sum(p is not None for p in self.mask_paths)
        chosen = f" ({'; '.join(self.selections)})" if self.selections else ""
        return (
            f"{type(self).__name__}(task={self.task!r}, split={getattr(self, 'split', '-')!r}): "
            f"{len(self)} images, classes {self.class_counts()}, {masks} with masks, "
            f"{len(self.skipped)} skipped{chosen}"
        )

    def subset(self: D, indices: Sequence[int] | np.ndarray | torch.Tensor, why: str = "") -> D:
        """The images at ``indices`` (in that order) as a dataset of this class.

        Every per-image attribute (:attr:`per_image`: ids, image and mask paths, labels, and the
        lesion ids of ISIC 2018) is taken at ``indices``, so ``class_counts()`` and ``summary()``
        count the subset; ``skipped`` and ``bad_files`` stay those of the split read from disk
        (unreadable images, in neither dataset). Transform, cache and loading settings are
        shared. ``why`` (e.g. ``"limit 60"``) is listed by ``summary()``.

        Raises ``TypeError`` for non-integer indices and ``ValueError`` for negative,
        out-of-range or repeated ones.
        """
        keep = check_indices(indices, len(self))
        sub = copy.copy(self)
        for name in self.per_image:
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                setattr(sub, name, value[keep])
            else:
                setattr(sub, name, [value[k] for k in keep.tolist()])
        sub.skipped, sub.bad_files = list(self.skipped), list(self.bad_files)
        sub.selections = [*self.selections, f"{why or 'subset'}: {len(keep)} of {len(self)}"]
        return sub

    def limit(self: D, n: int) -> D:
        """At most ``n`` images: the first ``max(1, n // classes)`` of each class, in dataset
        order (``--limit``; deterministic, see :func:`~.subsets.first_per_class`)."""
        return self.subset(first_per_class(self.labels, n), f"limit {n}")

    def sample(self: D, n: int, seed: int) -> D:
        """``n`` images drawn with ``seed``, kept in dataset order (all when ``n >= len(self)``;
        ``--train-limit``, see :func:`~.subsets.random_indices`)."""
        return self.subset(random_indices(len(self), n, seed), f"sample {n}, seed {seed}")

    def holdout(self: D, fraction: float, seed: int, part: str) -> D:
        """A seeded stratified ``fraction`` of each class (``part="held_out"``), or the other
        images (``part="rest"``); see :func:`~.subsets.stratified_holdout`. The two parts of one
        ``fraction`` and ``seed`` split the dataset."""
        held = stratified_holdout(self.labels, fraction, seed)
        if part == "held_out":
            return self.subset(held, f"held-out {fraction:g}, seed {seed}")
        if part == "rest":
            rest = np.setdiff1d(np.arange(len(self)), held)
            return self.subset(rest, f"rest after holding out {fraction:g}, seed {seed}")
        raise ValueError(f"holdout part must be 'held_out' or 'rest', got {part!r}")

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
