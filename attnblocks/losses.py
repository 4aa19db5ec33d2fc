"""Focal losses (Lin et al., ICCV 2017) and the Dice attention regularizer of AttnMel (IPMI 2019).

Focal loss, per element with true-class probability ``p_t``:

.. code-block:: text

    FL(p_t) = -alpha_t * (1 - p_t)^gamma * log(p_t)

``alpha_t`` is applied *outside* ``p_t`` (the AttnMel reference folds class weights into the
probability, which is a different loss). With ``gamma = 0`` and ``alpha = None`` the softmax form is
exactly cross-entropy.

Dice attention regularizer, for attention maps ``A_i`` in [0, 1] and reference masks average-pooled
to each map's size ``M_i``:

.. code-block:: text

    L = sum_i lambda_i * (1 - Dice(A_i, M_i)),     Dice(A, M) = 2 * sum(A * M) / sum(A + M)

with the sums over the whole batch tensor (the paper's form) or per image and averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DiceAttentionRegularizer",
    "FocalLoss",
    "focal_loss",
    "sigmoid_focal_loss",
    "soft_dice",
]

_REDUCTIONS = ("none", "mean", "sum")
_DICE_REDUCTIONS = ("batch", "image")
# (1 - p_t) is clamped here so that (1 - p_t)^gamma has a finite gradient for 0 < gamma < 1.
_TINY = 1e-30


def _check_reduction(reduction: str, where: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{where}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_gamma(gamma: float, where: str) -> None:
    if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or gamma < 0:
        raise ValueError(f"{where}: gamma must be a number >= 0, got {gamma!r}")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _class_weights(
    alpha: float | Sequence[float] | Tensor | None, num_classes: int
) -> Tensor | None:
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        if num_classes != 2 or not 0.0 <= alpha <= 1.0:
            raise ValueError(
                "focal_loss: a float alpha weighs class 1 by alpha and class 0 by 1 - alpha, so it "
                f"needs 2 classes and 0 <= alpha <= 1; got alpha={alpha!r} with {num_classes} "
                "classes (pass one weight per class instead)"
            )
        return torch.tensor([1.0 - alpha, float(alpha)])
    weights = torch.as_tensor(alpha, dtype=torch.float32).flatten()
    if weights.numel() != num_classes:
        raise ValueError(
            f"focal_loss: alpha has {weights.numel()} weights, expected one per class "
            f"({num_classes})"
        )
    return weights


def focal_loss(
    input: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """Multi-class (softmax) focal loss ``-alpha_t * (1 - p_t)^gamma * log p_t``.

    Args:
        input: logits ``(N, C)`` or ``(N, C, d1, ...)``, any float dtype (computed in at least
            float32).
        target: class indices ``(N,)`` or ``(N, d1, ...)``, integer dtype.
        gamma: focusing parameter >= 0. Default 2.0; 0 gives (weighted) cross-entropy.
        alpha: ``None`` (default, no weighting), one weight per class (sequence or tensor of C), or
            for C = 2 a float: class 1 weighs ``alpha``, class 0 ``1 - alpha`` (the binary
            convention of :func:`sigmoid_focal_loss`). Multiplies the loss outside ``p_t``.
        reduction: ``"mean"`` (default; over the non-ignored elements, not weighted by alpha),
            ``"sum"`` or ``"none"`` (shape of ``target``; ignored elements are 0).
        ignore_index: target value that contributes nothing. Default -100, as cross-entropy.

    Returns:
        The loss in float32 (float64 for float64 input); a scalar unless ``reduction="none"``.
        With no non-ignored element the mean is 0.

    Example:
        >>> logits, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
        >>> torch.allclose(focal_loss(logits, y, gamma=0.0), F.cross_entropy(logits, y))
        True
    """
    _check_reduction(reduction, "focal_loss")
    _check_gamma(gamma, "focal_loss")
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise TypeError(
            f"focal_loss: input and target must be Tensors, got {type(input).__name__} and "
            f"{type(target).__name__}"
        )
    if input.dim() < 2:
        raise ValueError(
            f"focal_loss: input must be (N, C, ...) logits, got shape {tuple(input.shape)}"
        )
    expected = (input.shape[0], *input.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"focal_loss: target shape {tuple(target.shape)} does not match input "
            f"{tuple(input.shape)}; expected {expected}"
        )
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"focal_loss: target must hold class indices (int), got {target.dtype}")
    num_classes = input.shape[1]
    keep = target != ignore_index
    if not torch.compiler.is_compiling():
        bad = keep & ((target < 0) | (target >= num_classes))
        if bool(bad.any()):
            raise ValueError(
                f"focal_loss: target values must lie in [0, {num_classes}) or equal ignore_index "
                f"({ignore_index}), got {target[bad].unique().tolist()}"
            )
    safe_target = torch.where(keep, target, torch.zeros_like(target)).long()
    log_p = F.log_softmax(input.to(torch.promote_types(input.dtype, torch.float32)), dim=1)
    log_pt = log_p.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    one_minus_pt = (-torch.expm1(log_pt)).clamp_min(_TINY)
    loss = -(one_minus_pt**gamma) * log_pt
    weights = _class_weights(alpha, num_classes)
    if weights is not None:
        loss = loss * weights.to(loss.device)[safe_target]
    loss = loss * keep
    if reduction == "mean":
        return loss.sum() / keep.sum().clamp_min(1)
    return _reduce(loss, reduction)


class FocalLoss(nn.Module):
    """Module form of :func:`focal_loss` (softmax, multi-class); see it for the arguments.

    Example:
        >>> criterion = FocalLoss(gamma=2.0, alpha=[0.25, 0.75])
        >>> criterion(torch.randn(8, 2), torch.randint(0, 2, (8,))).shape
        torch.Size([])
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | Tensor | None = None,
        reduction: str = "mean",
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        _check_reduction(reduction, "FocalLoss")
        _check_gamma(gamma, "FocalLoss")
        self.gamma = float(gamma)
        scalar = isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
        self.alpha = float(alpha) if scalar else alpha
        if alpha is not None and not scalar:
            self.alpha = torch.as_tensor(alpha, dtype=torch.float32)
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return focal_loss(input, target, self.gamma, self.alpha, self.reduction, self.ignore_index)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, reduction={self.reduction!r}"


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """Binary (sigmoid) focal loss; the same numbers as ``torchvision.ops.sigmoid_focal_loss``.

    ``p = sigmoid(inputs)``, ``p_t = p`` where the target is 1 and ``1 - p`` where it is 0,
    ``alpha_t = alpha`` for positives and ``1 - alpha`` for negatives:
    ``loss = alpha_t * (1 - p_t)^gamma * BCEWithLogits(inputs, targets)``.

    Args:
        inputs: logits of any shape, any float dtype (computed in at least float32).
        targets: same shape, in [0, 1] (float, int or bool).
        alpha: positive-class weight in [0, 1]; ``None`` or a negative value disables weighting
            (torchvision's convention). Default 0.25.
        gamma: focusing parameter >= 0. Default 2.0.
        reduction: ``"none"`` (default, as torchvision), ``"mean"`` or ``"sum"``.

    Returns:
        The loss, float32 (float64 for float64 input).
    """
    _check_reduction(reduction, "sigmoid_focal_loss")
    _check_gamma(gamma, "sigmoid_focal_loss")
    if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
        raise TypeError("sigmoid_focal_loss: inputs and targets must be Tensors")
    if inputs.shape != targets.shape:
        raise ValueError(
            f"sigmoid_focal_loss: targets shape {tuple(targets.shape)} does not match inputs "
            f"{tuple(inputs.shape)}"
        )
    if alpha is not None and alpha > 1:
        raise ValueError(f"sigmoid_focal_loss: alpha must be <= 1 (or None), got {alpha!r}")
    x = inputs.to(torch.promote_types(inputs.dtype, torch.float32))
    t = targets.to(x.dtype)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t).clamp_min(_TINY) ** gamma if gamma != 0 else ce
    if alpha is not None and alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return _reduce(loss, reduction)


def _mask_to_float(mask: Tensor, batch: int) -> Tensor:
    """(N, 1, H, W) float32 mask in [0, 1] from bool, {0, 1}/{0, 255} uint8 or [0, 1] float."""
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
        scale = torch.where(mask.amax() > 1, 255.0, 1.0)
        return mask.float() / scale
    if mask.is_floating_point():
        mask = mask.float()
        if check and bool(((mask < 0) | (mask > 1) | mask.isnan()).any()):
            raise ValueError(
                "DiceAttentionRegularizer: float masks must lie in [0, 1] (divide {0, 255} masks "
                f"by 255), got min {mask.min().item():g}, max {mask.max().item():g}"
            )
        return mask
    raise TypeError(
        f"DiceAttentionRegularizer: masks must be bool, uint8 or float, got dtype {mask.dtype}"
    )


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
        valid: ``(N,)`` bool or float weights; samples with 0 contribute nothing. ``None``: all.
        reduction: ``"batch"`` (default; one Dice over the whole batch tensor, as AttnMel) or
            ``"image"`` (Dice per image, averaged over the valid images).
        eps: added to the denominator.

    Returns:
        float32 scalar Dice in [0, 1]; 0 when no sample is valid.
    """
    if reduction not in _DICE_REDUCTIONS:
        raise ValueError(
            f"soft_dice: reduction must be one of {_DICE_REDUCTIONS}, got {reduction!r}"
        )
    a = attn.float()
    m = mask.float()
    if valid is None:
        w = torch.ones(a.shape[0], device=a.device)
    else:
        w = valid.to(device=a.device, dtype=torch.float32).flatten()
    w4 = w.view(-1, 1, 1, 1)
    inter = (a * m * w4).sum(dim=(1, 2, 3))
    total = ((a + m) * w4).sum(dim=(1, 2, 3))
    if reduction == "batch":
        return 2 * inter.sum() / (total.sum() + eps)
    per_image = 2 * inter / (total + eps)
    return (per_image * w).sum() / w.sum().clamp_min(eps)


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
        eps: added to the Dice denominator.

    Forward:
        maps: sequence of ``(N, 1, h_i, w_i)`` maps in [0, 1] (one per weight), e.g. the list from
            ``AttentionGatedNet.forward_with_attention``.
        masks: ``(N, 1, H, W)`` or ``(N, H, W)``; bool, uint8 in {0, 1} or {0, 255}, or float in
            [0, 1].
        valid: ``(N,)`` bool/float: which samples have a mask. Samples with ``False`` contribute
            nothing (they are not counted as empty masks); with no valid sample the loss is 0,
            still connected to the maps' graph.

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
        weights = tuple(float(w) for w in weights)
        if not weights or any(w < 0 for w in weights):
            raise ValueError(
                f"DiceAttentionRegularizer: weights must be one or more numbers >= 0, got {weights}"
            )
        if reduction not in _DICE_REDUCTIONS:
            raise ValueError(
                f"DiceAttentionRegularizer: reduction must be one of {_DICE_REDUCTIONS}, "
                f"got {reduction!r}"
            )
        self.weights = weights
        self.reduction = reduction
        self.eps = eps

    def forward(
        self, maps: Sequence[Tensor] | Tensor, masks: Tensor, valid: Tensor | None = None
    ) -> Tensor:
        if isinstance(maps, Tensor):
            maps = [maps]
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
        m = _mask_to_float(masks, batch).to(maps[0].device)
        if valid is not None:
            valid = torch.as_tensor(valid, device=m.device).flatten()
            if valid.numel() != batch:
                raise ValueError(
                    f"DiceAttentionRegularizer: valid must hold one flag per sample ({batch}), "
                    f"got shape {tuple(valid.shape)}"
                )
            any_valid = valid.float().sum() > 0
        else:
            any_valid = torch.ones((), dtype=torch.bool, device=m.device)
        loss = torch.zeros((), device=m.device)
        for weight, a in zip(self.weights, maps, strict=True):
            pooled = F.adaptive_avg_pool2d(m, a.shape[-2:])
            dice = soft_dice(a, pooled, valid, self.reduction, self.eps)
            # no valid sample: 0 with a (zero) gradient path instead of a spurious 1 - 0
            loss = loss + weight * torch.where(any_valid, 1 - dice, dice * 0)
        return loss

    def extra_repr(self) -> str:
        return f"weights={self.weights}, reduction={self.reduction!r}"
