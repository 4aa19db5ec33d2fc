"""Attention normalizations N(F) of ARL (Zhang et al., IEEE TMI 2019, Sec. III-B) and a name registry.

Every normalization maps a feature tensor ``(N, C, H, W)`` to an attention mask of the same shape:

- ``"spatial"`` — softmax over the ``H*W`` positions of each ``(n, c)`` map (the paper's choice and the
  default): ``N(F)[n, c, p] = exp F[n, c, p] / sum_q exp F[n, c, q]``.
- ``"channel"`` — softmax over the ``C`` channels at each position (what ``nn.Softmax2d`` computes).
- ``"sigmoid"`` — element-wise logistic function (the paper's "mixed" attention).

They compute in (at least) float32 and return the input dtype, so fp16/bf16 inputs neither overflow nor
lose the mask's small values; under autocast the same holds.

The reshapes here (and in the blocks and gates that call these functions) are plain torch, not einops:
torch.fx feature extractors trace through them with proxies, which einops does not accept.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._tracing import is_symbolic_tracing

__all__ = [
    "NormalizationFn",
    "channel_softmax",
    "get_normalization",
    "list_normalizations",
    "register_normalization",
    "sigmoid_attention",
    "spatial_softmax",
]

NormalizationFn = Callable[[Tensor], Tensor]


def _check_4d(x: Tensor, name: str) -> None:
    if is_symbolic_tracing():  # symbolic proxies carry no shape to check
        return
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4D tensor (N, C, H, W), got shape {tuple(x.shape)}")


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def spatial_softmax(x: Tensor) -> Tensor:
    """Softmax over the ``H*W`` positions of every ``(n, c)`` map; each map sums to 1.

    Args:
        x: features ``(N, C, H, W)``.

    Returns:
        The mask, same shape and dtype as ``x``.
    """
    _check_4d(x, "spatial_softmax")
    n, c, h, w = x.shape
    out = torch.softmax(x.to(_compute_dtype(x)).reshape(n, c, h * w), dim=-1)
    return out.reshape(n, c, h, w).to(x.dtype)


def channel_softmax(x: Tensor) -> Tensor:
    """Softmax over the ``C`` channels at every position (``nn.Softmax2d``); sums to 1 over C.

    Args:
        x: features ``(N, C, H, W)``.

    Returns:
        The mask, same shape and dtype as ``x``.
    """
    _check_4d(x, "channel_softmax")
    return torch.softmax(x.to(_compute_dtype(x)), dim=1).to(x.dtype)


def sigmoid_attention(x: Tensor) -> Tensor:
    """Element-wise sigmoid ("mixed" attention): every value in (0, 1), nothing sums to 1.

    Args:
        x: features ``(N, C, H, W)``.

    Returns:
        The mask, same shape and dtype as ``x``.
    """
    _check_4d(x, "sigmoid_attention")
    return torch.sigmoid(x.to(_compute_dtype(x))).to(x.dtype)


_NORMALIZATIONS: dict[str, NormalizationFn] = {
    "spatial": spatial_softmax,
    "channel": channel_softmax,
    "sigmoid": sigmoid_attention,
}


def list_normalizations() -> list[str]:
    """Names of the registered normalizations, sorted."""
    return sorted(_NORMALIZATIONS)


def register_normalization(name: str, fn: NormalizationFn, *, overwrite: bool = False) -> None:
    """Register ``fn`` under ``name`` so that every attnblocks module accepts it by name.

    ``fn`` maps ``(N, C, H, W)`` features to a mask of the same shape and dtype.

    Raises:
        TypeError: ``name`` is not a string or ``fn`` is not callable.
        ValueError: ``name`` is taken and ``overwrite`` is False.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"normalization name must be a non-empty str, got {name!r}")
    if not callable(fn):
        raise TypeError(f"normalization {name!r} must be callable, got {type(fn).__name__}")
    if name in _NORMALIZATIONS and not overwrite:
        raise ValueError(f"normalization {name!r} is already registered (pass overwrite=True)")
    _NORMALIZATIONS[name] = fn


def get_normalization(name: str | NormalizationFn) -> NormalizationFn:
    """Return the normalization registered as ``name`` (a callable is returned unchanged).

    Raises:
        ValueError: unknown name; the message lists the known ones.
        TypeError: neither a string nor a callable.
    """
    if callable(name):
        return name
    if not isinstance(name, str):
        raise TypeError(f"normalization must be a name or a callable, got {type(name).__name__}")
    try:
        return _NORMALIZATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown normalization {name!r}; known: {', '.join(list_normalizations())}"
        ) from None
