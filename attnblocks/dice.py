"""The Dice attention regularizer of AttnMel (IPMI 2019) and the soft Dice it is built on.

For attention maps ``A_i`` in [0, 1] and reference masks average-pooled to each map's size ``M_i``:

.. code-block:: text

    L = sum_i lambda_i * (1 - Dice(A_i, M_i)),     Dice(A, M) = 2 * sum(A * M) / sum(A + M)

with the sums over the whole batch tensor (the paper's form) or per image and averaged.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DiceAttentionRegularizer", "soft_dice"]

_DICE_REDUCTIONS = ("batch", "image")


def _mask_to_float(mask: Tensor, batch: int, keep: Tensor | None = None) -> Tensor:
    """(N, 1, H, W) float32 mask in [0, 1] from bool, {0, 1}/{0, 255} uint8 or [0, 1] float.

    ``keep`` ``(N,)`` bool: the samples whose float masks are checked (the others are never read).
    """
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"DiceAttentionRegularizer: masks must be a Tensor, got {type(mask).__name__}"
        )
    shape = tuple(mask.shape)
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != batch:
        raise ValueError(
            f"DiceAttentionRegularizer: masks must be (N, 1, H, W) or (N, H, W) with N = {batch} "
            f"(the maps' batch), got shape {shape}"
        )
    if mask.dtype == torch.bool:
        return mask.float()
    check = not torch.compiler.is_compiling()
    if mask.dtype == torch.uint8:
        # {0, 1} or {0, 255}: the encoding is told by the maximum, without a data-dependent branch
        if check and bool(
            ((mask > 1) & (mask != 255)).any() or (mask.gt(1).any() & (mask == 1).any())
        ):
            raise ValueError(
                "DiceAttentionRegularizer: uint8 masks must hold {0, 1} or {0, 255}, got values "
                f"{mask.unique()[:10].tolist()}"
            )
        scale = torch.where((mask > 1).any(), 255.0, 1.0)  # also for a batch of 0
        return mask.float() / scale
    if mask.is_floating_point():
        mask = mask.float()
        if check:
            seen = (
                mask
                if keep is None
                else torch.where(keep.to(mask.device).view(-1, 1, 1, 1), mask, 0.0)
            )
            if bool(((seen < 0) | (seen > 1) | seen.isnan()).any()):
                raise ValueError(
                    "DiceAttentionRegularizer: float masks must lie in [0, 1] (divide {0, 255} "
                    f"masks by 255), got min {seen.min().item():g}, max {seen.max().item():g}"
                )
        return mask
    raise TypeError(
        f"DiceAttentionRegularizer: masks must be bool, uint8 or float, got dtype {mask.dtype}"
    )


def _check_eps(eps: float, where: str) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{where}: eps must be a float >= 0, got {eps!r}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{where}: eps must be a finite float >= 0, got {eps!r}")
    return float(eps)


def _check_reduction(reduction: str, where: str) -> None:
    if not isinstance(reduction, str) or reduction not in _DICE_REDUCTIONS:
        raise ValueError(f"{where}: reduction must be one of {_DICE_REDUCTIONS}, got {reduction!r}")


def _valid_weights(valid: Tensor | None, batch: int, device: torch.device, where: str) -> Tensor:
    """``(N,)`` float32 sample weights from ``valid`` (None: all ones)."""
    if valid is None:
        return torch.ones(batch, device=device)
    try:
        w = torch.as_tensor(valid, device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{where}: valid must be a bool or float tensor, got {valid!r}") from err
    if w.is_complex():
        raise TypeError(f"{where}: valid must be bool or float, got dtype {w.dtype}")
    w = w.flatten()
    if w.numel() != batch:
        raise ValueError(
            f"{where}: valid must hold one flag per sample ({batch}), got shape "
            f"{tuple(torch.as_tensor(valid).shape)}"
        )
    return w.to(torch.float32)


def soft_dice(
    attn: Tensor,
    mask: Tensor,
    valid: Tensor | None = None,
    reduction: str = "batch",
    eps: float = 1e-6,
) -> Tensor:
    """Soft Dice ``2 * sum(A * M) / sum(A + M)`` of maps and masks of the same shape.

    Args:
        attn: ``(N, 1, h, w)`` maps in [0, 1] (sigmoid-normalised).
        mask: ``(N, 1, h, w)`` float masks in [0, 1] (already at the maps' size).
        valid: ``(N,)`` bool or float weights >= 0; samples with 0 contribute nothing: their map
            and mask are never read, so a NaN or inf there changes neither the Dice nor any
            gradient. ``None``: all samples count.
        reduction: ``"batch"`` (default; one Dice over the whole batch tensor, as AttnMel) or
            ``"image"`` (Dice per image, averaged over the valid images).
        eps: added to the denominator (finite, >= 0).

    Returns:
        float32 scalar Dice in [0, 1]; 0 when no sample is valid, and for a batch of 0 samples.
    """
    _check_reduction(reduction, "soft_dice")
    eps = _check_eps(eps, "soft_dice")
    for name, t in (("attn", attn), ("mask", mask)):
        if not isinstance(t, Tensor):
            raise TypeError(f"soft_dice: {name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"soft_dice: {name} must be (N, C, h, w), got {tuple(t.shape)}")
    if attn.shape != mask.shape:
        raise ValueError(
            f"soft_dice: attn {tuple(attn.shape)} and mask {tuple(mask.shape)} must have the same "
            "shape (pool the mask to the map's size first)"
        )
    w = _valid_weights(valid, attn.shape[0], attn.device, "soft_dice")
    keep = (w != 0).view(-1, 1, 1, 1)
    # select, not multiply: an excluded sample's NaN/inf must not reach the sums or the gradients
    a = torch.where(keep, attn.float(), 0.0)
    m = torch.where(keep, mask.float().to(a.device), 0.0)
    w4 = w.view(-1, 1, 1, 1)
    inter = (a * m * w4).sum(dim=(1, 2, 3))
    total = ((a + m) * w4).sum(dim=(1, 2, 3))
    if reduction == "batch":
        return 2 * inter.sum() / _nonzero(total.sum() + eps)
    per_image = 2 * inter / _nonzero(total + eps)
    return (per_image * w).sum() / _nonzero(w.sum())


def _nonzero(den: Tensor) -> Tensor:
    """``den`` with 0 replaced by 1: a sum over nothing (no valid sample, empty masks and maps
    with ``eps=0``) gives a Dice of 0, never 0/0."""
    return torch.where(den == 0, torch.ones_like(den), den)


class DiceAttentionRegularizer(nn.Module):
    """AttnMel's attention regularizer: ``sum_i weights[i] * (1 - Dice(A_i, pool(M, A_i.size)))``.

    Each reference mask is average-pooled (``adaptive_avg_pool2d``) to each map's size, so one
    full-resolution mask serves every gate. Dice needs sigmoid-normalised maps: a spatial-softmax
    map sums to 1 over the image and scores close to 0 however well it is placed.

    Args:
        weights: one ``lambda`` per attention map. Default ``(1e-3, 1e-2)``: AttnMel's pool-3 and
            pool-4 gates.
        reduction: ``"batch"`` (default; Dice over the whole batch tensor, the paper's form) or
            ``"image"`` (Dice per image, averaged over the valid images).
        eps: added to the Dice denominator (finite, >= 0).

    Raises:
        TypeError: ``weights`` is not a sequence of numbers (a bool is not a number here).
        ValueError: no weight, a weight that is negative, NaN or inf; an unknown ``reduction``; an
            ``eps`` that is negative, NaN or inf.

    Forward:
        maps: sequence of ``(N, 1, h_i, w_i)`` maps in [0, 1] (one per weight), e.g. the list from
            ``AttentionGatedNet.forward_with_attention``.
        masks: ``(N, 1, H, W)`` or ``(N, H, W)``; bool, uint8 in {0, 1} or {0, 255}, or float in
            [0, 1].
        valid: ``(N,)`` bool/float: which samples have a mask. Samples with ``False`` (0)
            contribute nothing: they are not counted as empty masks, and their maps are never read,
            so a NaN or inf map there leaves the loss and the other samples' gradients exactly as
            without that sample. With no valid sample, and for a batch of 0 samples, the loss is
            0, still connected to the maps' graph (``loss.backward()`` works), in both reductions.

    Returns:
        float32 scalar.

    Example:
        >>> reg = DiceAttentionRegularizer(weights=(1e-3, 1e-2))
        >>> maps = [torch.rand(2, 1, 28, 28), torch.rand(2, 1, 14, 14)]
        >>> masks = torch.zeros(2, 224, 224, dtype=torch.bool)
        >>> reg(maps, masks, valid=torch.tensor([True, False])).shape
        torch.Size([])
    """

    def __init__(
        self,
        weights: Sequence[float] = (1e-3, 1e-2),
        reduction: str = "batch",
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        where = "DiceAttentionRegularizer"
        if isinstance(weights, Tensor):
            weights = weights.detach().flatten().tolist()
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
            raise TypeError(
                f"{where}: weights must be a sequence of numbers (one per map), got {weights!r}"
            )
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, numbers.Real):
                raise TypeError(f"{where}: weights must be numbers, got {w!r} in {weights!r}")
        weights = tuple(float(w) for w in weights)
        if not weights or any(not (math.isfinite(w) and w >= 0) for w in weights):
            raise ValueError(
                f"{where}: weights must be one or more finite numbers >= 0, got {weights}"
            )
        _check_reduction(reduction, where)
        self.weights = weights
        self.reduction = reduction
        self.eps = _check_eps(eps, where)

    def forward(
        self, maps: Sequence[Tensor] | Tensor, masks: Tensor, valid: Tensor | None = None
    ) -> Tensor:
        if isinstance(maps, Tensor):
            maps = [maps]
        if isinstance(maps, (str, bytes)) or not isinstance(maps, Iterable):
            raise TypeError(
                "DiceAttentionRegularizer: maps must be a Tensor or a sequence of Tensors (one per "
                f"weight), got {type(maps).__name__}"
            )
        maps = list(maps)
        if len(maps) != len(self.weights):
            raise ValueError(
                f"DiceAttentionRegularizer: got {len(maps)} attention maps for "
                f"{len(self.weights)} weights {self.weights}"
            )
        for i, a in enumerate(maps):
            if not isinstance(a, Tensor) or a.dim() != 4 or a.shape[1] != 1:
                shape = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
                raise ValueError(
                    f"DiceAttentionRegularizer: map {i} must be (N, 1, h, w), got {shape}"
                )
            if a.shape[0] != maps[0].shape[0]:
                raise ValueError(
                    f"DiceAttentionRegularizer: map {i} has batch {a.shape[0]}, map 0 has "
                    f"{maps[0].shape[0]}"
                )
        batch = maps[0].shape[0]
        w = _valid_weights(valid, batch, maps[0].device, "DiceAttentionRegularizer")
        keep = None if valid is None else w != 0
        m = _mask_to_float(masks, batch, keep).to(maps[0].device)
        # no valid sample (an all-invalid batch or a batch of 0): the loss is 0, with a gradient
        # path to the maps; decided on the device, without a host sync
        any_valid = w.sum() > 0
        loss = torch.zeros((), device=m.device)
        for weight, a in zip(self.weights, maps, strict=True):
            pooled = F.adaptive_avg_pool2d(m, a.shape[-2:])
            dice = soft_dice(a, pooled, w, self.reduction, self.eps)
            loss = loss + weight * torch.where(any_valid, 1 - dice, dice * 0)
        return loss

    def extra_repr(self) -> str:
        return f"weights={self.weights}, reduction={self.reduction!r}"
