"""Multi-process helpers for the ISIC pipelines (``torchrun``: gloo on CPU, nccl on CUDA).

The engine uses :class:`DistInfo` to know who it is; a single process is the world of size 1, so
the same code runs unchanged with and without ``torchrun``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "DistInfo",
    "ShardSampler",
    "all_gather_objects",
    "broadcast_buffers",
    "init_distributed",
    "reduce_sum",
    "shard_loader",
    "unshard",
]


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and local rank of this process (``0, 1, 0`` without ``torchrun``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; uses the nccl backend for CUDA devices and gloo
    otherwise. Without those variables (a plain ``python script.py``) it returns a world of one.
    On CUDA the process is bound to ``cuda:LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank ``r`` of ``w`` reads indices ``r, r + w, r + 2w, ...``.

    Unlike :class:`torch.utils.data.DistributedSampler` it never pads, so no sample is counted
    twice; :func:`all_gather_objects` and :func:`unshard` put the pieces back in dataset order.
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"ShardSampler: need 0 <= rank < world_size, got {rank}, {world_size}")
        self.length, self.rank, self.world_size = int(length), rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def shard_loader(dataset: Dataset, dist_info: DistInfo, **loader_kw: Any) -> DataLoader:
    """An evaluation loader over this rank's :class:`ShardSampler` share of ``dataset``."""
    sampler = ShardSampler(len(dataset), dist_info.rank, dist_info.world_size)
    return DataLoader(dataset, sampler=sampler, **loader_kw)


def all_gather_objects(obj: Any, dist_info: DistInfo) -> list[Any]:
    """Gather one picklable object per rank (a list of ``world_size`` objects, rank order)."""
    if not dist_info.enabled:
        return [obj]
    out: list[Any] = [None] * dist_info.world_size
    dist.all_gather_object(out, obj)
    return out


def unshard(pieces: list[list[Any]]) -> list[Any]:
    """Interleave per-rank lists produced under :class:`ShardSampler` back into dataset order."""
    world = len(pieces)
    total = sum(len(p) for p in pieces)
    return [pieces[i % world][i // world] for i in range(total)]


def broadcast_buffers(module: torch.nn.Module, dist_info: DistInfo) -> None:
    """Give every rank rank 0's buffers (e.g. BatchNorm running statistics).

    DDP broadcasts them at the start of each training forward only, so after the last step of an
    epoch every rank holds the statistics of its own batches; evaluation needs one model.
    """
    if dist_info.enabled:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def reduce_sum(values: list[float], dist_info: DistInfo) -> list[float]:
    """Sum a short list of floats over all ranks (identity for a world of one)."""
    if not dist_info.enabled:
        return list(values)
    device = f"cuda:{dist_info.local_rank}" if dist_info.backend == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
