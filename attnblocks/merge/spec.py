"""What every implementation of the ARL merge op receives: normalization codes and the fused norms.

A fused norm is a ``BatchNorm2d`` applied inside the op (``F = bn(t)``, ``s = bn(u)``); its
``mode`` says how: 0 no norm (the tensor is ``F`` or ``s`` itself), 1 fixed (running) statistics,
2 batch statistics (running ones updated in place as ``nn.BatchNorm2d`` does).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

# normalization codes of the op's ``normalization`` argument
SPATIAL, SIGMOID, CHANNEL = 0, 1, 2
CODES = {"spatial": SPATIAL, "sigmoid": SIGMOID, "channel": CHANNEL}

# norm modes
NO_NORM, RUNNING_STATS, BATCH_STATS = 0, 1, 2


class NormIn(NamedTuple):
    """A fused norm as the forward receives it."""

    weight: Tensor | None
    bias: Tensor | None
    running_mean: Tensor | None
    running_var: Tensor | None
    mode: int
    eps: float
    momentum: float


class NormOut(NamedTuple):
    """A fused norm as the backward receives it: ``stats`` = the (2, C) float32 mean and invstd
    the forward used (empty without a norm)."""

    weight: Tensor | None
    bias: Tensor | None
    stats: Tensor
    mode: int


NO_NORM_IN = NormIn(None, None, None, None, NO_NORM, 0.0, 0.0)


def up(x: Tensor) -> Tensor:
    """``x`` in its compute dtype: float32, or float64 for float64 input."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
