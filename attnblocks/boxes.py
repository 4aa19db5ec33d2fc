"""Lesion boxes for CARE: from masks, from saliency, and as inner/outer weight maps.

Boxes are ``(N, 4)`` float tensors ``(x1, y1, x2, y2)`` in pixel-edge coordinates: a box that covers
columns ``j0..j1`` has ``x1 = j0`` and ``x2 = j1 + 1`` (torchvision's ``tv_tensors.BoundingBoxes``
format ``XYXY``, so that flips, rotations, crops and resizes of ``torchvision.transforms.v2`` move the
boxes with the image). A pixel ``(i, j)`` lies in a box when its centre ``(j + 0.5, i + 0.5)`` does.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ._checks import check_int, check_real, check_size
from .cam import minmax_maps

__all__ = [
    "box_to_inner_outer",
    "boxes_from_masks",
    "boxes_from_saliency",
    "check_boxes",
    "list_outer_weightings",
    "list_saliency_methods",
    "spectral_residual_saliency",
]


def check_boxes(
    boxes: Tensor,
    size: tuple[int, int],
    valid: Tensor | None = None,
    *,
    clip: bool = False,
) -> Tensor:
    """Validate ``boxes`` ``(N, 4)`` XYXY against an image of ``size = (H, W)``; return them as float.

    Only rows with ``valid`` True (all rows by default) are checked. A box that reaches outside the
    image raises, or with ``clip=True`` is clipped to it with a warning; a box that is empty (after
    clipping) or covers no pixel centre always raises.

    Raises:
        ValueError: wrong shape, non-finite values, a box outside the image (without ``clip``) or an
            empty box; the message names the offending box and the image size.
    """
    h, w = check_size(size)
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be an (N, 4) tensor of (x1, y1, x2, y2), got {shape}")
    boxes = boxes.float()
    if valid is None:
        valid = torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    valid = torch.as_tensor(valid, device=boxes.device).bool().view(-1)
    if valid.numel() != boxes.shape[0]:
        raise ValueError(
            f"valid must have one flag per box ({boxes.shape[0]}), got {valid.numel()}"
        )
    rows = boxes[valid]
    if not torch.isfinite(rows).all():
        raise ValueError(f"boxes must be finite, got {rows[~torch.isfinite(rows).all(1)].tolist()}")
    limit = rows.new_tensor([w, h, w, h])
    outside = ((rows < 0) | (rows > limit)).any(dim=1)
    if outside.any():
        bad = rows[outside][0].tolist()
        if not clip:
            raise ValueError(
                f"box {bad} reaches outside the {h}x{w} (HxW) image; "
                "pass clip=True to clip boxes to the image"
            )
        warnings.warn(
            f"{int(outside.sum())} box(es) clipped to the {h}x{w} image (first: {bad})",
            stacklevel=2,
        )
        boxes = boxes.clone()
        boxes[valid] = torch.minimum(rows.clamp_min(0), limit)
        rows = boxes[valid]
    # a box holds a pixel centre c + 0.5 when x1 <= c + 0.5 <= x2
    n_cols = torch.floor(rows[:, 2] - 0.5) - torch.ceil(rows[:, 0] - 0.5) + 1
    n_rows = torch.floor(rows[:, 3] - 0.5) - torch.ceil(rows[:, 1] - 0.5) + 1
    empty = (rows[:, 2] <= rows[:, 0]) | (rows[:, 3] <= rows[:, 1]) | (n_cols < 1) | (n_rows < 1)
    if empty.any():
        raise ValueError(
            f"box {rows[empty][0].tolist()} is empty (it covers no pixel centre of the {h}x{w} "
            "image); drop it with valid=False"
        )
    return boxes


def _corners(boxes: Tensor) -> tuple[Tensor, ...]:
    """``x1, y1, x2, y2``, each ``(N, 1, 1, 1)``, to compare with the pixel grids."""
    return rearrange(boxes, "n corner -> corner n 1 1 1").unbind(0)


def _inside(boxes: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
    """Boolean inside-mask ``(N, 1, H, W)`` and the pixel-centre coordinate grids, ``xs``
    ``(1, 1, 1, W)`` and ``ys`` ``(1, 1, H, 1)``."""
    ys = rearrange(torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5, "h -> 1 1 h 1")
    xs = rearrange(torch.arange(w, device=boxes.device, dtype=torch.float32) + 0.5, "w -> 1 1 1 w")
    x1, y1, x2, y2 = _corners(boxes)
    inside = (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)
    return inside, xs, ys


def _uniform_outer(boxes: Tensor, inside: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    return (~inside).float()


def _distance_outer(boxes: Tensor, inside: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    x1, y1, x2, y2 = _corners(boxes)
    dx = torch.maximum(x1 - xs, xs - x2).clamp_min(0)
    dy = torch.maximum(y1 - ys, ys - y2).clamp_min(0)
    return torch.sqrt(dx**2 + dy**2) * (~inside).float()


_OUTER: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]] = {
    "uniform": _uniform_outer,
    "distance": _distance_outer,
}


def list_outer_weightings() -> list[str]:
    """Names accepted by ``box_to_inner_outer(outer=...)``."""
    return sorted(_OUTER)


def box_to_inner_outer(
    boxes: Tensor,
    size: tuple[int, int],
    outer: str = "uniform",
    valid: Tensor | None = None,
    *,
    clip: bool = False,
) -> tuple[Tensor, Tensor]:
    """Turn boxes into the inner and outer weight maps of the CARE loss.

    ``inner = 1 / |box|`` on the pixels inside the box, 0 elsewhere, so ``sum(cam * inner)`` is the
    mean of the map inside the box. ``outer`` weights the pixels outside the box and sums to 1:
    ``"uniform"`` (default; the mean of the map outside) or ``"distance"`` (weights proportional to the
    Euclidean distance from the pixel centre to the box, so far-away attention costs more). A box that
    covers the whole image has an all-zero ``outer``.

    Args:
        boxes: ``(N, 4)`` XYXY pixel-edge boxes.
        size: ``(H, W)`` of the maps.
        outer: a name from :func:`list_outer_weightings`.
        valid: ``(N,)`` bool; rows that are False get all-zero maps and are not checked.
        clip: clip boxes that reach outside the image (with a warning) instead of raising.

    Returns:
        ``(inner, outer)``, each ``(N, 1, H, W)`` float32.

    Raises:
        ValueError: bad boxes (see :func:`check_boxes`) or an unknown ``outer``.
    """
    if outer not in _OUTER:
        raise ValueError(
            f"unknown outer weighting {outer!r}; choose from {list_outer_weightings()}"
        )
    h, w = check_size(size)
    boxes = check_boxes(boxes, (h, w), valid, clip=clip)
    keep = (
        torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
        if valid is None
        else torch.as_tensor(valid, device=boxes.device).bool().view(-1)
    )
    inside, xs, ys = _inside(boxes, h, w)
    keep = keep.view(-1, 1, 1, 1).float()
    inner = inside.float()
    inner = inner / inner.sum(dim=(2, 3), keepdim=True).clamp_min(1) * keep
    out = _OUTER[outer](boxes, inside, xs, ys)
    out = out / out.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12) * keep
    return inner, out


def boxes_from_masks(
    masks: Tensor, margin: float = 0.0, threshold: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Tight boxes around the foreground of lesion masks, optionally widened by a margin.

    Args:
        masks: ``(N, H, W)`` or ``(N, 1, H, W)``; foreground where ``mask > threshold`` (masks scaled
            to 0..255 are accepted: they are divided by 255 when their maximum exceeds 1).
        margin: widen each side by this fraction of the box's width/height, clipped to the image.
        threshold: foreground threshold on the [0, 1] scale, in [0, 1).

    Returns:
        ``(boxes, valid)``: ``(N, 4)`` float XYXY pixel-edge boxes and ``(N,)`` bool, False (with an
        all-zero box) where a mask has no foreground.
    """
    if not isinstance(masks, Tensor):
        raise TypeError(
            f"masks must be a Tensor (N, H, W) or (N, 1, H, W), got {type(masks).__name__}"
        )
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"masks must be (N, H, W) or (N, 1, H, W), got {tuple(masks.shape)}")
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real):
        raise TypeError(f"margin must be a finite fraction >= 0, got {margin!r}")
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"margin must be a finite fraction >= 0, got {margin}")
    # foreground is mask > threshold: at or above 1 nothing is, below 0 everything is
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a finite number in [0, 1), got {threshold!r}")
    if not 0.0 <= threshold < 1.0:  # also refuses NaN
        raise ValueError(f"threshold must be a finite number in [0, 1), got {threshold!r}")
    m = masks.float()
    if m.numel() and bool(m.isnan().any()):
        raise ValueError("masks hold NaN values; a mask must be in [0, 1] or 0..255")
    if m.numel() and m.max() > 1:
        m = m / 255.0
    fg = m > threshold
    n, h, w = fg.shape
    rows, cols = fg.any(dim=2), fg.any(dim=1)
    valid = rows.any(dim=1)
    idx_h = torch.arange(h, device=fg.device)
    idx_w = torch.arange(w, device=fg.device)
    big = torch.tensor(10**9, device=fg.device)
    y1 = torch.where(rows, idx_h, big).amin(dim=1)
    y2 = torch.where(rows, idx_h, -1).amax(dim=1) + 1
    x1 = torch.where(cols, idx_w, big).amin(dim=1)
    x2 = torch.where(cols, idx_w, -1).amax(dim=1) + 1
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    if margin > 0:
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        grow = torch.stack([-bw, -bh, bw, bh], dim=1) * margin
        boxes = torch.minimum((boxes + grow).clamp_min(0), boxes.new_tensor([w, h, w, h]))
    boxes = torch.where(valid[:, None], boxes, torch.zeros_like(boxes))
    return boxes, valid


def _blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    pad_h = min(radius, x.shape[-2] - 1)
    pad_w = min(radius, x.shape[-1] - 1)
    x = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1)[..., radius - pad_w : radius + pad_w + 1])
    return F.conv2d(x, k.view(1, 1, -1, 1)[..., radius - pad_h : radius + pad_h + 1, :])


def spectral_residual_saliency(images: Tensor, width: int = 64, sigma: float = 5.0) -> Tensor:
    """Spectral-residual saliency (Hou & Zhang, CVPR 2007), a training-free map per image.

    On the grey image ``I`` resized to ``width`` columns (aspect kept)::

        A = |FFT(I)|,  P = angle(FFT(I)),  L = log A
        R = L - mean3x3(L)                                  (the spectral residual)
        S = blur_sigma( |IFFT(exp(R + i P))|^2 )            (Gaussian blur)

    Args:
        images: ``(N, C, H, W)`` (C = 1 or 3; RGB is averaged to grey).
        width: working width in pixels (the paper uses 64), an int >= 1.
        sigma: Gaussian blur in working pixels, a finite number > 0.

    Returns:
        ``(N, 1, H, W)`` maps upsampled to the input size, min-max normalised to [0, 1].
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a Tensor (N, C, H, W), got {type(images).__name__}")
    if images.dim() != 4 or images.shape[-1] == 0 or images.shape[-2] == 0:
        raise ValueError(f"images must be (N, C, H, W) with H, W >= 1, got {tuple(images.shape)}")
    width = check_int(width, "width", "spectral_residual_saliency", low=1)
    sigma = check_real(sigma, "sigma", "spectral_residual_saliency", low=0.0, low_open=True)
    h, w = images.shape[-2:]
    if images.shape[0] == 0:
        return images.new_zeros((0, 1, h, w), dtype=torch.float32)
    grey = images.float().mean(dim=1, keepdim=True)
    wh = (max(8, round(width * h / w)), width)
    grey = F.interpolate(grey, size=wh, mode="bilinear", align_corners=False, antialias=True)
    spec = torch.fft.fft2(grey)
    log_amp = torch.log(spec.abs().clamp_min(1e-8))
    smooth = F.avg_pool2d(F.pad(log_amp, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    residual = torch.exp(torch.complex(log_amp - smooth, torch.zeros_like(log_amp)))
    rec = torch.fft.ifft2(residual * torch.exp(1j * torch.angle(spec)))
    sal = _blur(rec.abs() ** 2, sigma)
    sal = F.interpolate(sal, size=(h, w), mode="bilinear", align_corners=False)
    return minmax_maps(sal, eps=1e-12)


_SALIENCY: dict[str, Callable[[Tensor], Tensor]] = {
    "spectral_residual": spectral_residual_saliency,
}


def list_saliency_methods() -> list[str]:
    """Names accepted by ``boxes_from_saliency(method=...)``."""
    return sorted(_SALIENCY)


def boxes_from_saliency(
    images: Tensor,
    method: str = "spectral_residual",
    threshold: float = 1.5,
    margin: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Boxes around the salient region of each image, without any training.

    The saliency map ``S`` of ``method`` is thresholded at ``threshold * mean(S)`` and the tight box
    of the pixels above it is returned (see :func:`boxes_from_masks`, which also applies ``margin``).
    Hou & Zhang's object map uses ``3 * mean``; dermoscopy lesions fill much of the frame, and 1.5
    (the default) with a wider blur matches the mask boxes better (median IoU 0.51 against 0.35 on
    the 35 images of ``isic2018_200x150_mini``).

    Returns:
        ``(boxes, valid)`` as in :func:`boxes_from_masks`.
    """
    if method not in _SALIENCY:
        raise ValueError(
            f"unknown saliency method {method!r}; choose from {list_saliency_methods()}"
        )
    threshold = check_real(
        threshold, "threshold (a multiple of the mean saliency)", low=0.0, low_open=True
    )
    sal = _SALIENCY[method](images)
    level = sal.flatten(1).mean(dim=1).view(-1, 1, 1, 1) * threshold
    return boxes_from_masks((sal > level).float()[:, 0], margin=margin)
