"""Focal losses (Lin et al., ICCV 2017): softmax (multi-class) and sigmoid (binary) forms.

Per element with true-class probability ``p_t``:

.. code-block:: text

    FL(p_t) = -alpha_t * (1 - p_t)^gamma * log(p_t)

``alpha_t`` is applied *outside* ``p_t`` (the AttnMel reference folds class weights into the
probability, which is a different loss). With ``gamma = 0`` and ``alpha = None`` the softmax form is
exactly cross-entropy.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FocalLoss", "focal_loss", "sigmoid_focal_loss"]

_REDUCTIONS = ("none", "mean", "sum")
# (1 - p_t) is clamped here so that (1 - p_t)^gamma has a finite gradient for 0 < gamma < 1.
_TINY = 1e-30


def _check_reduction(reduction: str, where: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{where}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _is_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_gamma(gamma: float, where: str) -> None:
    if not _is_number(gamma):
        raise TypeError(f"{where}: gamma must be a number >= 0, got {gamma!r}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"{where}: gamma must be a finite number >= 0, got {gamma!r}")


def _check_ignore_index(ignore_index: int, where: str) -> None:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"{where}: ignore_index must be an int, got {ignore_index!r}")


def _check_alpha(alpha: object, where: str) -> None:
    """Values of ``alpha`` (the length is checked against the logits): finite, >= 0, a scalar
    at most 1. Runs on the host; a tensor ``alpha`` on an accelerator is checked there once."""
    if alpha is None:
        return
    if isinstance(alpha, bool):
        raise TypeError(
            f"{where}: alpha must be a float, a sequence of floats or None, got {alpha}"
        )
    if _is_number(alpha):
        if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
            raise ValueError(
                f"{where}: a float alpha must lie in [0, 1] (class 1 weighs alpha, class 0 "
                f"1 - alpha), got {alpha!r}"
            )
        return
    if isinstance(alpha, (str, bytes)):
        raise TypeError(
            f"{where}: alpha must be a float, a sequence of floats or None, got {alpha!r}"
        )
    if isinstance(alpha, Sequence) and any(not _is_number(a) for a in alpha):
        raise TypeError(f"{where}: alpha must hold numbers (one weight per class), got {alpha!r}")
    if not isinstance(alpha, (Sequence, Tensor)):
        raise TypeError(
            f"{where}: alpha must be a float, a sequence of floats, a Tensor or None, got "
            f"{type(alpha).__name__}"
        )
    weights = torch.as_tensor(alpha).detach()
    if weights.is_complex() or weights.dtype == torch.bool:
        raise TypeError(f"{where}: alpha must hold real weights, got dtype {weights.dtype}")
    if weights.numel() == 0:
        raise ValueError(f"{where}: alpha must hold one weight per class, got none")
    if torch.compiler.is_compiling():
        return
    weights = weights.double()
    if not bool((torch.isfinite(weights) & (weights >= 0)).all()):
        raise ValueError(
            f"{where}: per-class alpha weights must be finite and >= 0, got "
            f"{weights.flatten().tolist()[:10]}"
        )


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
    if _is_number(alpha):
        if num_classes != 2:
            raise ValueError(
                "focal_loss: a float alpha weighs class 1 by alpha and class 0 by 1 - alpha, so it "
                f"needs 2 classes and 0 <= alpha <= 1; got alpha={alpha!r} with {num_classes} "
                "classes (pass one weight per class instead)"
            )
        return torch.tensor([1.0 - float(alpha), float(alpha)])
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
        gamma: focusing parameter, finite and >= 0. Default 2.0; 0 gives (weighted) cross-entropy.
        alpha: ``None`` (default, no weighting), one weight per class (sequence or tensor of C), or
            for C = 2 a float: class 1 weighs ``alpha``, class 0 ``1 - alpha`` (the binary
            convention of :func:`sigmoid_focal_loss`). Multiplies the loss outside ``p_t``. Weights
            must be finite and >= 0 (a float alpha at most 1).
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
    _check_alpha(alpha, "focal_loss")
    _check_ignore_index(ignore_index, "focal_loss")
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise TypeError(
            f"focal_loss: input and target must be Tensors, got {type(input).__name__} and "
            f"{type(target).__name__}"
        )
    if not input.is_floating_point():
        raise TypeError(
            f"focal_loss: input must be float logits (N, C, ...), got dtype {input.dtype} (class "
            "indices belong in target)"
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
        _check_alpha(alpha, "FocalLoss")
        _check_ignore_index(ignore_index, "FocalLoss")
        self.gamma = float(gamma)
        scalar = _is_number(alpha)
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
            (torchvision's convention). Default 0.25. NaN, inf and values above 1 raise.
        gamma: focusing parameter, finite and >= 0. Default 2.0.
        reduction: ``"none"`` (default, as torchvision), ``"mean"`` or ``"sum"``.

    Returns:
        The loss, float32 (float64 for float64 input); the mean of an empty input is 0.

    Raises:
        TypeError: non-float ``inputs``, ``alpha`` or ``gamma`` of the wrong type.
        ValueError: shapes differ, targets outside [0, 1] or NaN, ``alpha`` NaN/inf or above 1,
            ``gamma`` negative or not finite, unknown ``reduction``.
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
    if alpha is not None and not _is_number(alpha):
        raise TypeError(f"sigmoid_focal_loss: alpha must be a float or None, got {alpha!r}")
    if alpha is not None and not (math.isfinite(alpha) and alpha <= 1):
        raise ValueError(
            f"sigmoid_focal_loss: alpha must be a finite number <= 1 (negative: no weighting) or "
            f"None, got {alpha!r}"
        )
    if not inputs.is_floating_point():
        raise TypeError(
            f"sigmoid_focal_loss: inputs must be float logits, got dtype {inputs.dtype}"
        )
    x = inputs.to(torch.promote_types(inputs.dtype, torch.float32))
    t = targets.to(x.dtype)
    if not torch.compiler.is_compiling() and bool(((t < 0) | (t > 1) | t.isnan()).any()):
        raise ValueError(
            "sigmoid_focal_loss: targets must lie in [0, 1] (divide {0, 255} masks by 255), got "
            f"values {t[(t < 0) | (t > 1) | t.isnan()].unique()[:5].tolist()}"
        )
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t).clamp_min(_TINY) ** gamma if gamma != 0 else ce
    if alpha is not None and alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    if reduction == "mean":  # an empty input gives 0 (as focal_loss), not 0/0
        return loss.sum() / max(loss.numel(), 1)
    return _reduce(loss, reduction)
