"""The papers' patch sampling and augmentation, as ``torchvision.transforms.v2`` pipelines.

(The geometric pieces live in ``patches.py`` and are re-exported here.)

Every transform takes ``(image, mask)`` -- ``tv_tensors.Image`` (uint8 or float, 3xHxW) and
``tv_tensors.Mask`` (1xHxW) -- and moves both through the *same* geometry (masks with nearest
interpolation); colour operations touch the image only. Sizes are arguments (default 224).

**ARL** (Zhang et al., TMI 2019, Sec. IV-B):

- :func:`arl_train_transform`: a patch from the central part of the image at a scale drawn from
  ``scales`` = 1/5, 2/5, 3/5, 4/5 of the image size (:class:`CentralPatchCrop`), resized to
  ``size x size`` bilinearly, then rotation +-10 degrees, zoom 90-110 %, horizontal and vertical
  flips. The paper draws 60 patches per image per epoch: use
  :class:`~examples.isic.data.sampling.OversamplingSampler` with ``base_repeats=60``.
- :func:`arl_test_transform`: 9 views stacked into ``(9, 3, S, S)`` (masks ``(9, 1, S, S)``);
  ``mode="random"`` is the paper's 9 random central patches, ``mode="deterministic"`` the authors'
  later 9 views (:class:`NineViews`): the full image, 4 proportional centre crops (``s*H x s*W``)
  and 4 square centre crops (``s*min(H, W)`` square), ``s`` in ``scales``. Average the 9 scores.

*Central part* (the paper gives no number): a patch of relative scale ``s`` lies inside the centred
window of relative size ``max(s, central_fraction)`` (default 0.8), so a 4/5 patch is the centre
crop and smaller patches move within it.

**AttnMel** (Yan et al., IPMI 2019): :func:`attnmel_train_transform` = centre crop of
``0.8 * min(H, W)`` (square), resize to ``256 x 256``, random ``224`` crop, random 90-degree
rotations, horizontal and vertical flips; :func:`attnmel_eval_transform` = the same centre crop and
resize, then the centre ``224`` crop. At other sizes the resize is ``round(size * 256 / 224)``.

Options: ``color_constancy=True`` applies :class:`GrayWorld` (ARL paper V-F) to the whole image
first; ``mean``/``std`` default to ImageNet's (fine-tuning) and ``None`` skips normalization;
:func:`compute_mean_std` gives a training set's statistics.

    >>> tf = arl_train_transform(size=96)
    >>> image, mask = tf(tv_tensors.Image(img_uint8), tv_tensors.Mask(mask_uint8))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from .patches import (
    ARL_SCALES,
    BILINEAR,
    ARLPatchAugment,
    CentralPatchCrop,
    CentralSquareCrop,
    NineViews,
    RandomRot90,
)

__all__ = [
    "ARL_SCALES",
    "ARLPatchAugment",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CentralPatchCrop",
    "CentralSquareCrop",
    "GrayWorld",
    "NineViews",
    "RandomRot90",
    "arl_test_transform",
    "arl_train_transform",
    "attnmel_eval_transform",
    "attnmel_train_transform",
    "compute_mean_std",
    "gray_world",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def gray_world(image: Tensor, eps: float = 1e-6) -> Tensor:
    """Gray-world colour constancy: ``x_c * mean(x) / mean(x_c)`` per image and channel.

    ``image`` is ``(..., 3, H, W)`` uint8 (0-255, result rounded and clamped) or float (result
    clamped to ``[0, max(1, image.max())]``). The channel means of the output are equal.
    """
    if image.ndim < 3 or image.shape[-3] != 3:
        raise ValueError(f"gray_world expects (..., 3, H, W), got {tuple(image.shape)}")
    x = image.float()
    means = x.mean(dim=(-2, -1), keepdim=True)
    gray = means.mean(dim=-3, keepdim=True)
    out = x * (gray / means.clamp_min(eps))
    if image.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.clamp_(0, max(1.0, float(image.max()))).to(image.dtype)


class GrayWorld(v2.Transform):
    """:func:`gray_world` as a v2 transform; masks and other inputs pass through."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask) or not isinstance(inpt, Tensor):
            return inpt
        return tv_tensors.wrap(gray_world(inpt.as_subclass(Tensor)), like=inpt)


def _finish(
    steps: list[v2.Transform],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    color_constancy: bool,
) -> v2.Compose:
    head = [GrayWorld()] if color_constancy else []
    tail: list[v2.Transform] = [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.float32, "others": None}, scale=True)
    ]  # fmt: skip
    if mean is not None:
        tail.append(v2.Normalize(mean=list(mean), std=list(std if std is not None else (1, 1, 1))))
    return v2.Compose(head + steps + tail)


def arl_train_transform(
    size: int = 224,
    scales: Sequence[float] = ARL_SCALES,
    central_fraction: float = 0.8,
    rotation: float = 10.0,
    zoom: tuple[float, float] = (0.9, 1.1),
    hflip: bool = True,
    vflip: bool = True,
    color_constancy: bool = False,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    fused: bool = True,
) -> v2.Compose:
    """ARL training pipeline: central patch, resize, rotate/zoom, flips, float, normalize.

    ``fused=True`` (default) runs the geometry as one :class:`ARLPatchAugment`; ``False`` as the
    chain ``CentralPatchCrop -> RandomAffine -> RandomHorizontalFlip -> RandomVerticalFlip``
    (same distribution of outputs, about half the speed).
    """
    if fused:
        steps: list[v2.Transform] = [
            ARLPatchAugment(size, scales, central_fraction, rotation, zoom, hflip, vflip)
        ]
        return _finish(steps, mean, std, color_constancy)
    steps = [CentralPatchCrop(size, scales, central_fraction)]
    if rotation or zoom != (1.0, 1.0):
        steps.append(v2.RandomAffine(degrees=rotation, scale=zoom, interpolation=BILINEAR))
    steps += [v2.RandomHorizontalFlip()] if hflip else []
    steps += [v2.RandomVerticalFlip()] if vflip else []
    return _finish(steps, mean, std, color_constancy)


def arl_test_transform(
    size: int = 224,
    mode: str = "deterministic",
    scales: Sequence[float] = ARL_SCALES,
    central_fraction: float = 0.8,
    color_constancy: bool = False,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> v2.Compose:
    """ARL test pipeline: 9 views ``(9, 3, size, size)`` (see :class:`NineViews`)."""
    return _finish([NineViews(size, mode, scales, central_fraction)], mean, std, color_constancy)


def _resize_for(size: int, resize: int | None) -> int:
    return resize if resize is not None else round(size * 256 / 224)


def attnmel_train_transform(
    size: int = 224,
    resize: int | None = None,
    crop_fraction: float = 0.8,
    color_constancy: bool = False,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> v2.Compose:
    """AttnMel training: centre 0.8 square, resize 256, random 224 crop, rot90, flips."""
    steps = [
        CentralSquareCrop(crop_fraction),
        v2.Resize([_resize_for(size, resize)] * 2, interpolation=BILINEAR, antialias=True),
        v2.RandomCrop(size),
        RandomRot90(),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
    ]
    return _finish(steps, mean, std, color_constancy)


def attnmel_eval_transform(
    size: int = 224,
    resize: int | None = None,
    crop_fraction: float = 0.8,
    color_constancy: bool = False,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> v2.Compose:
    """AttnMel evaluation: centre 0.8 square, resize 256, centre 224 crop."""
    steps = [
        CentralSquareCrop(crop_fraction),
        v2.Resize([_resize_for(size, resize)] * 2, interpolation=BILINEAR, antialias=True),
        v2.CenterCrop(size),
    ]
    return _finish(steps, mean, std, color_constancy)


def compute_mean_std(
    dataset: Iterable[Any], max_images: int | None = None
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std of the images of ``dataset`` (pixels pooled over all images).

    Items may be dicts with ``"image"``, ``(image, ...)`` tuples or tensors; images ``(3, H, W)``
    (float in [0, 1] or uint8, scaled to [0, 1]). Use on the *training* set without
    normalization in its transform. Accumulates in float64.
    """
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for k, item in enumerate(dataset):
        if max_images is not None and k >= max_images:
            break
        image = (
            item["image"]
            if isinstance(item, dict)
            else item[0]
            if isinstance(item, tuple | list)
            else item
        )
        if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"compute_mean_std expects (3, H, W) image tensors, got {shape}")
        x = image.double() / (255.0 if image.dtype == torch.uint8 else 1.0)
        total += x.sum(dim=(1, 2))
        total_sq += (x * x).sum(dim=(1, 2))
        count += x.shape[1] * x.shape[2]
    if count == 0:
        raise ValueError("compute_mean_std: the dataset yielded no images")
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
