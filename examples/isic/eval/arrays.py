"""Inputs of the metric functions as checked arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

__all__ = ["as_finite_array"]


def as_finite_array(x: Tensor | np.ndarray | Sequence, name: str) -> np.ndarray:
    """``x`` as a float64 array; ``ValueError`` naming ``name`` when it holds NaN or inf."""
    if isinstance(x, Tensor):
        x = x.detach().float().cpu().numpy()
    out = np.asarray(x, dtype=np.float64)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return out
