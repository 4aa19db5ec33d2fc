"""Which images a subset of a dataset keeps: index checks and the selection rules.

:meth:`ISICDataset.subset <examples.isic.data.base.ISICDataset.subset>` takes the images at given
indices; the rules here turn a dataset's labels into those indices, deterministically:

- :func:`first_per_class`: the first ``n // classes`` images of each class, in dataset order
  (``--limit``; no randomness, so the same flags choose the same images).
- :func:`random_indices`: ``n`` images drawn with a seed, in dataset order (``--train-limit``).
- :func:`stratified_holdout`: a seeded ``fraction`` of each class (at least one image of a class
  when ``fraction > 0``), for a validation split cut from a training split.

Multi-label labels (rows of 0/1, ISIC 2017 ``task="both"``) count each distinct row as a class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["check_indices", "first_per_class", "random_indices", "stratified_holdout"]


def check_indices(indices: Sequence[int] | np.ndarray | torch.Tensor, size: int) -> np.ndarray:
    """``indices`` as an int64 array after checking each is an int in ``[0, size)``, once.

    Raises ``TypeError`` for indices that are not integers (bools and floats included), and
    ``ValueError`` naming the first negative, out-of-range or repeated index.
    """
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    if isinstance(indices, (str, bytes)) or np.isscalar(indices):
        raise TypeError(f"subset indices must be a sequence of ints, got {indices!r}")
    arr = np.asarray(indices)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"subset indices must be ints, got {arr.dtype} values")
    if arr.ndim != 1:
        raise ValueError(f"subset indices must be one-dimensional, got shape {arr.shape}")
    arr = arr.astype(np.int64)
    negative = np.flatnonzero(arr < 0)
    if len(negative):
        raise ValueError(
            f"subset index {arr[negative[0]]} (position {negative[0]}) is negative; "
            f"indices count from 0 to {size - 1}"
        )
    beyond = np.flatnonzero(arr >= size)
    if len(beyond):
        raise ValueError(
            f"subset index {arr[beyond[0]]} (position {beyond[0]}) is out of range for a dataset "
            f"of {size} images"
        )
    values, first, counts = np.unique(arr, return_index=True, return_counts=True)
    if (counts > 1).any():
        repeated = values[counts > 1]
        raise ValueError(
            f"subset indices repeat {len(repeated)} images (first: index {repeated[0]}); "
            "each image can be taken once"
        )
    return arr


def _classes(labels: np.ndarray) -> tuple[int, np.ndarray]:
    """The number of classes present and the class (0..k-1) of each image."""
    labels = np.asarray(labels)
    if labels.ndim == 2:  # multi-label: each distinct row is a class
        rows, inverse = np.unique(labels, axis=0, return_inverse=True)
        return len(rows), inverse.reshape(-1)
    values, inverse = np.unique(labels, return_inverse=True)
    return len(values), inverse.reshape(-1)


def first_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Sorted indices of the first ``max(1, n // k)`` images of each of the ``k`` classes present
    (at most ``n`` images when ``n >= k``; the whole set when every class has fewer)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"limit needs a number of images >= 1, got {n!r}")
    count, classes = _classes(labels)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    per = max(1, n // count)
    picks = [np.flatnonzero(classes == c)[:per] for c in range(count)]
    return np.sort(np.concatenate(picks))


def random_indices(size: int, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` of ``size`` images drawn with ``numpy.random.default_rng(seed)``
    (all of them, in order, when ``n >= size``)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"sample needs a number of images >= 1, got {n!r}")
    if n >= size:
        return np.arange(size, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).permutation(size)[:n])


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded ``fraction`` of each class: ``round(fraction * count)`` images
    of a class of ``count``, at least one when ``fraction > 0``, none when it is 0."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"holdout fraction must be in [0, 1], got {fraction!r}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    count, classes = _classes(labels)
    picks = []
    for c in range(count):
        members = np.flatnonzero(classes == c)
        take = max(1, round(fraction * len(members))) if fraction > 0 else 0
        picks.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate([np.zeros(0, dtype=np.int64), *picks]))
