"""CARE: class attention to regions of lesion (Zhuang et al., MIDL 2019; arXiv 2307.10036).

A training-time loss for imbalanced classification. For images of designated rare classes that have a
lesion box, the Grad-CAM map of the image's class (no ReLU, min-max normalised, at input size) is
pushed into the box::

    L_care = -min( sum(cam * inner), tau ) + sum(cam * outer)           per boxed image
    L      = (1 - mix) * L_cls + mix * sum_{boxed images} L_care

``inner = 1/|box|`` inside the box and ``outer`` sums to 1 outside it (see
:func:`attnblocks.box_to_inner_outer`), so the first term is the mean attention in the box, capped at
``tau`` (no gradient once it passes ``tau``), and the second the mean attention outside. Defaults
``tau = 0.5``, ``mix = 0.01``. Nothing is added to the network: :class:`CARE` only hooks the target
layer during its own call, so the trained model's ``state_dict`` and inference are those of the
plain model.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_flag, check_int, check_real
from .boxes import box_to_inner_outer, list_outer_weightings
from .gradcam import (
    capture_activation,
    default_target_layer,
    grad_cam_from_activation,
    resolve_layer,
)

__all__ = ["CARE", "CAREAttentionLoss", "CAREOutput", "care_attention_loss"]

_REDUCTIONS = ("sum", "mean", "none")


def _check_tau(tau: float, where: str) -> float:
    # the inner term is a mean attention in [0, 1]: tau >= 1 already removes the cap
    return check_real(tau, "tau", where, low=0.0, low_open=True)


def _check_maps(cam: Tensor, inner: Tensor, outer: Tensor) -> None:
    for name, t in (("cam", cam), ("inner", inner), ("outer", outer)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if cam.dim() != 4 or cam.shape[1] != 1:
        raise ValueError(f"cam must be (N, 1, H, W), got {tuple(cam.shape)}")
    for name, t in (("inner", inner), ("outer", outer)):
        if t.shape != cam.shape:
            raise ValueError(
                f"{name} must have the cam's shape {tuple(cam.shape)}, got {tuple(t.shape)}"
            )


def care_attention_loss(
    cam: Tensor,
    inner: Tensor,
    outer: Tensor,
    tau: float = 0.5,
    valid: Tensor | None = None,
    reduction: str = "sum",
) -> Tensor:
    """The CARE attention term ``-min(sum(cam * inner), tau) + sum(cam * outer)`` per image.

    Args:
        cam: ``(N, 1, H, W)`` class attention maps (Grad-CAM in [0, 1]).
        inner: ``(N, 1, H, W)`` weights inside the box (``1/|box|`` there, 0 elsewhere).
        outer: ``(N, 1, H, W)`` weights outside the box, summing to 1 (or all 0).
        tau: cap of the inner term; once the mean attention in the box exceeds ``tau``, the inner
            term gives no gradient.
        valid: ``(N,)`` bool or float weights; images with False/0 (no box, not a rare class) do
            not count: their maps are never read, so a NaN there changes neither the loss nor the
            gradients of the other images.
        reduction: ``"sum"`` over the valid images (the paper's form, default), ``"mean"`` over them,
            or ``"none"`` for the ``(N,)`` per-image terms (zero where not valid).

    Returns:
        A scalar (``"sum"``/``"mean"``) or ``(N,)`` tensor, float32 (float64 for float64 maps).
    """
    _check_maps(cam, inner, outer)
    tau = _check_tau(tau, "care_attention_loss")
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    dtype = torch.promote_types(cam.dtype, torch.float32)
    cam = cam.to(dtype)
    inner, outer = inner.to(dtype), outer.to(dtype)
    if valid is not None:
        weight = torch.as_tensor(valid, device=cam.device).to(dtype).view(-1)
        if weight.numel() != cam.shape[0]:
            raise ValueError(f"valid must hold one flag per image ({cam.shape[0]}), got {weight}")
        # select, not multiply: a NaN map of an image that does not count stays out of the sums
        keep = (weight != 0).view(-1, 1, 1, 1)
        cam = torch.where(keep, cam, 0.0)
        inner = torch.where(keep, inner, 0.0)
        outer = torch.where(keep, outer, 0.0)
    else:
        weight = torch.ones(cam.shape[0], dtype=dtype, device=cam.device)
    inside = (cam * inner).sum(dim=(1, 2, 3))
    outside = (cam * outer).sum(dim=(1, 2, 3))
    per_image = (-torch.clamp(inside, max=tau) + outside) * weight
    if reduction == "none":
        return per_image
    if reduction == "mean":
        return per_image.sum() / weight.sum().clamp_min(1)
    return per_image.sum()


class CAREAttentionLoss(nn.Module):
    """The CARE loss: the attention term of :func:`care_attention_loss` and its mix with a
    classification loss, ``(1 - mix) * cls_loss + mix * L_care``.

    Args:
        tau: cap of the inner term (default 0.5), a finite number > 0 (the inner term is a mean
            attention in [0, 1], so ``tau >= 1`` is no cap).
        mix: weight of the attention term in the convex mix (default 0.01), in [0, 1].
        reduction: how the per-image terms combine (``"sum"``, the paper's, by default).

    Shapes: ``cam``, ``inner``, ``outer``: ``(N, 1, H, W)``; ``valid``: ``(N,)``; ``cls_loss``: scalar.
    ``forward`` returns the mixed loss when ``cls_loss`` is given, the attention term otherwise.

    Example:
        >>> import torch, attnblocks as ab
        >>> inner, outer = ab.box_to_inner_outer(torch.tensor([[2.0, 2.0, 6.0, 6.0]]), (8, 8))
        >>> cam = inner / inner.max()                # all attention inside the box
        >>> ab.CAREAttentionLoss()(cam, inner, outer)
        tensor(-0.5000)
    """

    def __init__(self, tau: float = 0.5, mix: float = 0.01, reduction: str = "sum") -> None:
        super().__init__()
        tau = _check_tau(tau, "CAREAttentionLoss")
        mix = check_real(mix, "mix", "CAREAttentionLoss", low=0.0, high=1.0)
        if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.tau, self.mix, self.reduction = tau, mix, reduction

    def forward(
        self,
        cam: Tensor,
        inner: Tensor,
        outer: Tensor,
        valid: Tensor | None = None,
        cls_loss: Tensor | None = None,
    ) -> Tensor:
        att = care_attention_loss(cam, inner, outer, self.tau, valid, self.reduction)
        if cls_loss is None:
            return att
        return (1.0 - self.mix) * cls_loss + self.mix * att

    def extra_repr(self) -> str:
        return f"tau={self.tau}, mix={self.mix}, reduction={self.reduction!r}"


class CAREOutput(NamedTuple):
    """What a :class:`CARE` call returns."""

    loss: Tensor  #: the loss to back-propagate
    logits: Tensor  #: ``(N, num_classes)`` of the same forward pass
    cls_loss: Tensor  #: the classification loss alone
    care_loss: Tensor  #: the attention term (0 when no image of the batch qualifies)
    cam: Tensor | None  #: ``(N, 1, H, W)`` maps (zero for images not selected), or None
    selected: Tensor  #: ``(N,)`` bool: rare-class images with a valid box


class CARE:
    """Training-time CARE around a classifier: one forward, the classification loss and, for the
    rare-class images with a box, the attention loss on their Grad-CAM maps.

    ``CARE`` is a plain helper, not a module: it holds a reference to ``model`` and hooks
    ``target_layer`` only while it is called, so the model's parameters, buffers, ``state_dict`` and
    inference outputs are exactly those of the model used alone; save and deploy ``model`` itself.

    Args:
        model: classifier returning ``(N, num_classes)`` logits.
        target_layer: name or module of the Grad-CAM layer (the last stage, e.g. ``"layer4"`` of a
            ResNet or ``"bn2"`` of a timm EfficientNet); ``None`` takes timm's last feature stage.
        rare_classes: class indices whose images get the attention loss.
        num_classes: number of classes, to check ``rare_classes`` up front (default: the model's
            ``num_classes`` attribute when it has one, else checked against the logits).
        tau, mix, reduction: see :class:`CAREAttentionLoss`.
        outer: outer weighting, see :func:`attnblocks.box_to_inner_outer`.
        criterion: classification loss ``(logits, targets) -> scalar`` (default cross-entropy).
        clip_boxes: clip boxes that reach outside the image (with a warning) instead of raising.
        detach_weights: detach the Grad-CAM channel weights (default, as in the paper).
        enabled: ``False`` gives plain classification (stage 1); toggle it between stages.

    Example:
        >>> import timm, torch, attnblocks as ab
        >>> model = timm.create_model("resnet18", num_classes=3)
        >>> care = ab.CARE(model, "layer4", rare_classes=[2])
        >>> images, targets = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
        >>> boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [8.0, 8.0, 40.0, 40.0]])
        >>> out = care(images, targets, boxes)
        >>> out.loss.backward()
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | nn.Module | None = None,
        rare_classes: Sequence[int] = (),
        *,
        num_classes: int | None = None,
        tau: float = 0.5,
        mix: float = 0.01,
        reduction: str = "sum",
        outer: str = "uniform",
        criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
        clip_boxes: bool = False,
        detach_weights: bool = True,
        enabled: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        for flag, value in (
            ("clip_boxes", clip_boxes),
            ("detach_weights", detach_weights),
            ("enabled", enabled),
        ):
            check_flag(value, flag, "CARE")
        if criterion is not None and not callable(criterion):
            raise TypeError(
                f"CARE: criterion must be a callable (logits, targets) -> loss, got {criterion!r}"
            )
        if target_layer is None:
            target_layer = default_target_layer(model)
        self.layer_name, self.layer = resolve_layer(model, target_layer)
        if outer not in list_outer_weightings():
            raise ValueError(f"unknown outer weighting {outer!r}; choose {list_outer_weightings()}")
        if num_classes is None:
            num_classes = getattr(model, "num_classes", None)
        if num_classes is not None:
            num_classes = check_int(num_classes, "num_classes", "CARE", low=1)
        rare = self._rare_list(rare_classes)
        if len(set(rare)) != len(rare):
            raise ValueError(f"rare_classes has duplicates: {rare}")
        if num_classes is not None:
            self._check_rare(rare, num_classes)
        self.model = model
        self.rare_classes = rare
        self.num_classes = num_classes
        self.loss_fn = CAREAttentionLoss(tau, mix, reduction)
        self.outer = outer
        self.criterion = criterion if criterion is not None else F.cross_entropy
        self.clip_boxes = clip_boxes
        self.detach_weights = detach_weights
        self.enabled = enabled

    @staticmethod
    def _rare_list(rare_classes: object) -> list[int]:
        accepts = "a sequence of class indices (ints), e.g. [2] or (0, 2)"
        if isinstance(rare_classes, Tensor):
            if rare_classes.is_floating_point() or rare_classes.dtype == torch.bool:
                raise TypeError(
                    f"CARE: rare_classes must be {accepts}, got a {rare_classes.dtype} tensor"
                )
            rare_classes = rare_classes.flatten().tolist()
        if isinstance(rare_classes, (str, bytes)) or not isinstance(rare_classes, Iterable):
            raise TypeError(f"CARE: rare_classes must be {accepts}, got {rare_classes!r}")
        rare = list(rare_classes)
        for c in rare:
            if isinstance(c, bool) or not isinstance(c, numbers.Integral):
                raise TypeError(
                    f"CARE: rare_classes must be {accepts}, got the entry {c!r} in {rare!r}"
                )
        return [int(c) for c in rare]

    @staticmethod
    def _check_rare(rare: list[int], num_classes: int) -> None:
        bad = [c for c in rare if not 0 <= c < num_classes]
        if bad:
            raise ValueError(
                f"rare classes {bad} are not in the label set: class indices run 0..{num_classes - 1}"
            )

    def __repr__(self) -> str:
        return (
            f"CARE(model={type(self.model).__name__}, target_layer={self.layer_name!r}, "
            f"rare_classes={self.rare_classes}, {self.loss_fn.extra_repr()}, outer={self.outer!r}, "
            f"enabled={self.enabled})"
        )

    def __call__(
        self,
        images: Tensor,
        targets: Tensor,
        boxes: Tensor | None = None,
        box_valid: Tensor | None = None,
        *,
        model: nn.Module | None = None,
    ) -> CAREOutput:
        """One training forward.

        Args:
            images: ``(N, C, H, W)``.
            targets: ``(N,)`` class indices.
            boxes: ``(N, 4)`` XYXY pixel-edge boxes in the coordinates of ``images`` (after all
                geometric augmentation), or None (no attention loss for this batch).
            box_valid: ``(N,)`` bool: which rows of ``boxes`` are real (default: all).
            model: the module to call instead of the wrapped model, e.g. its DDP or
                ``torch.compile`` wrapper (it must run the wrapped model's target layer).

        Returns:
            :class:`CAREOutput`. ``loss = cls_loss`` when disabled, when ``boxes`` is None or when no
            image is both rare and boxed; otherwise ``(1 - mix) * cls_loss + mix * care_loss``.
        """
        targets = torch.as_tensor(targets, device=images.device).long().view(-1)
        active = self.enabled and boxes is not None and bool(self.rare_classes)
        with capture_activation(self.layer) as store:
            logits = (self.model if model is None else model)(images)
        if self.num_classes is None:
            self._check_rare(self.rare_classes, logits.shape[1])
        cls_loss = self.criterion(logits, targets)
        rare = torch.isin(targets, torch.tensor(self.rare_classes, device=targets.device))
        if box_valid is None:
            box_valid = torch.ones_like(rare)
        selected = rare & torch.as_tensor(box_valid, device=rare.device).bool().view(-1)
        zero = cls_loss.new_zeros(())
        if not active or not bool(selected.any()):
            return CAREOutput(cls_loss, logits, cls_loss, zero, None, selected)
        if not store:
            raise ValueError(f"target layer {self.layer_name!r} was not used in the forward pass")
        size = (images.shape[-2], images.shape[-1])
        inner, outer = box_to_inner_outer(
            boxes.to(images.device), size, self.outer, selected, clip=self.clip_boxes
        )
        cam = grad_cam_from_activation(
            logits, store[0], targets, size, detach_weights=self.detach_weights, select=selected
        )
        care_loss = self.loss_fn(cam, inner, outer, selected)
        loss = (1.0 - self.loss_fn.mix) * cls_loss + self.loss_fn.mix * care_loss
        return CAREOutput(loss, logits, cls_loss, care_loss, cam, selected)
