"""Class balancing: oversampling (repeat classes k times) and weighted sampling, DDP-aware.

- :class:`OversamplingSampler`: every epoch lists each image ``base_repeats`` times and the images
  of class ``c`` ``repeats[c]`` times instead (AttnMel: ``repeats={1: 4}`` = melanoma x4; ARL's 60
  patches per image: ``base_repeats=60``, the random patch transform makes each repeat a new patch).
- :class:`WeightedSampler`: ``num_samples`` draws with probability proportional to ``weights``
  (e.g. :func:`class_balanced_weights`), with or without replacement.

Both shuffle with ``seed + epoch`` (call ``set_epoch(epoch)`` each epoch, as with
``DistributedSampler``) and, with ``num_replicas > 1``, give rank ``rank`` the shard
``indices[rank::num_replicas]`` of one shared permutation, padded (or, with ``drop_last``, cut) to
a multiple of ``num_replicas`` so every rank gets the same count. ``num_replicas``/``rank`` default
to the initialised ``torch.distributed`` process group, else 1/0.

    >>> sampler = OversamplingSampler(train.labels, repeats={1: 4}, seed=0)
    >>> loader = DataLoader(train, batch_size=32, sampler=sampler)     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["OversamplingSampler", "WeightedSampler", "class_balanced_weights", "oversample_indices"]


def _world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    dist = torch.distributed
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(
            f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}"
        )
    return num_replicas, rank


def _labels_1d(labels: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    arr = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(
            f"expected (N,) integer class labels, got shape {arr.shape}; for multi-label targets "
            "pass one column, e.g. labels[:, 0]"
        )
    return arr.astype(np.int64)


def oversample_indices(
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    repeats: Mapping[int, int] | None = None,
    base_repeats: int = 1,
) -> np.ndarray:
    """Indices ``0..N-1``, each repeated ``repeats.get(label, base_repeats)`` times (sorted)."""
    y = _labels_1d(labels)
    repeats = dict(repeats or {})
    if base_repeats < 0 or any(r < 0 for r in repeats.values()):
        raise ValueError(f"repeat counts must be >= 0, got base {base_repeats}, {repeats}")
    counts = np.array([repeats.get(int(c), base_repeats) for c in y], dtype=np.int64)
    return np.repeat(np.arange(len(y)), counts)


def class_balanced_weights(
    labels: Sequence[int] | np.ndarray | torch.Tensor, power: float = 1.0
) -> np.ndarray:
    """Per-sample weights ``1 / count(class)^power`` (``power=1``: every class equally likely)."""
    y = _labels_1d(labels)
    counts = np.bincount(y)
    return 1.0 / counts[y].astype(np.float64) ** power


def _shard(indices: np.ndarray, num_replicas: int, rank: int, drop_last: bool) -> np.ndarray:
    if num_replicas == 1:
        return indices
    if drop_last:
        indices = indices[: len(indices) - len(indices) % num_replicas]
    else:
        pad = (-len(indices)) % num_replicas
        indices = np.concatenate([indices, indices[:pad]]) if pad else indices
    return indices[rank::num_replicas]


class OversamplingSampler(Sampler[int]):
    """Shuffled epoch of :func:`oversample_indices`, sharded per rank (see module docstring)."""

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        repeats: Mapping[int, int] | None = None,
        base_repeats: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        self.indices = oversample_indices(labels, repeats, base_repeats)
        self.shuffle, self.seed, self.epoch, self.drop_last = shuffle, seed, 0, drop_last
        self.num_replicas, self.rank = _world(num_replicas, rank)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _epoch_indices(self) -> np.ndarray:
        idx = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = idx[torch.randperm(len(idx), generator=g).numpy()]
        return _shard(idx, self.num_replicas, self.rank, self.drop_last)

    def __iter__(self) -> Iterator[int]:
        return iter(self._epoch_indices().tolist())

    def __len__(self) -> int:
        n, r = len(self.indices), self.num_replicas
        return n // r if self.drop_last else -(-n // r)


class WeightedSampler(Sampler[int]):
    """``num_samples`` draws proportional to ``weights`` per epoch, sharded per rank.

    Args:
        weights: ``(N,)`` non-negative sample weights.
        num_samples: draws per epoch over all ranks (default N).
        replacement: draw with replacement (default True).
    """

    def __init__(
        self,
        weights: Sequence[float] | np.ndarray | torch.Tensor,
        num_samples: int | None = None,
        replacement: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if (
            w.ndim != 1
            or len(w) == 0
            or (w < 0).any()
            or not torch.isfinite(w).all()
            or w.sum() <= 0
        ):
            raise ValueError(
                "weights must be a non-empty (N,) vector of finite values >= 0, not all 0"
            )
        self.weights = w
        self.num_samples = len(w) if num_samples is None else int(num_samples)
        if self.num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if not replacement and self.num_samples > int((w > 0).sum()):
            raise ValueError(
                f"cannot draw {self.num_samples} samples without replacement from "
                f"{int((w > 0).sum())} non-zero weights"
            )
        self.replacement, self.seed, self.epoch, self.drop_last = replacement, seed, 0, drop_last
        self.num_replicas, self.rank = _world(num_replicas, rank)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        idx = torch.multinomial(self.weights, self.num_samples, self.replacement, generator=g)
        return iter(_shard(idx.numpy(), self.num_replicas, self.rank, self.drop_last).tolist())

    def __len__(self) -> int:
        n, r = self.num_samples, self.num_replicas
        return n // r if self.drop_last else -(-n // r)
