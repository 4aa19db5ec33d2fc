"""Class activation maps (ARL paper, Eq. 13) and helpers to overlay any attention map on an image.

For the last-stage features ``f_k(x, y)`` (K channels) of a network whose classifier is one Linear
over their global average, and that Linear's weights ``w^c_k`` for class ``c``:

.. code-block:: text

    M_c(x, y) = sum_k w^c_k * f_k(x, y)                                    (Eq. 13)

so that the class score is the spatial mean of ``M_c`` plus the bias. Differentiable Grad-CAM lives
in :mod:`attnblocks.gradcam`; the attention maps of ARL blocks and grid gates are recorded with
:func:`attnblocks.record_attention`, and :func:`overlay_maps` brings any of them to image size.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_flag, check_real, check_size

__all__ = ["class_activation_map", "minmax_maps", "overlay_maps", "upsample_maps"]


def class_activation_map(features: Tensor, fc_weight: Tensor, class_idx: int | Tensor) -> Tensor:
    """Class activation map ``M_c = sum_k w^c_k f_k`` (ARL paper, Eq. 13).

    Args:
        features: ``(N, K, h, w)`` features that the classifier sees after global average pooling.
        fc_weight: ``(num_classes, K')`` classifier weight, ``K' >= K``; its first ``K`` columns
            are used (the GAP part of a classifier over concatenated features, as in
            :class:`attnblocks.AttentionGatedNet`, where the last stage comes first).
        class_idx: one class for all images (int) or one per image (``(N,)`` tensor).

    Returns:
        ``(N, 1, h, w)`` float32 map, unnormalised (see :func:`minmax_maps`).
    """
    if not isinstance(features, Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"class_activation_map: features must be (N, K, h, w), got {shape}")
    if not isinstance(fc_weight, Tensor) or fc_weight.dim() != 2:
        shape = (
            tuple(fc_weight.shape) if isinstance(fc_weight, Tensor) else type(fc_weight).__name__
        )
        raise ValueError(f"class_activation_map: fc_weight must be (num_classes, K), got {shape}")
    n, k = features.shape[:2]
    num_classes = fc_weight.shape[0]
    if fc_weight.shape[1] < k:
        raise ValueError(
            f"class_activation_map: fc_weight has {fc_weight.shape[1]} inputs, fewer than the "
            f"{k} feature channels"
        )
    if isinstance(class_idx, bool):
        raise TypeError(
            f"class_activation_map: class_idx must be an int or int tensor, got {class_idx}"
        )
    idx = torch.as_tensor(class_idx, device=fc_weight.device)
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(
            f"class_activation_map: class_idx must hold class indices (int), got dtype {idx.dtype}"
        )
    idx = idx.long().flatten()
    if idx.numel() == 1:
        idx = idx.expand(n)
    if idx.numel() != n:
        raise ValueError(
            f"class_activation_map: class_idx must be an int or hold one class per image ({n}), "
            f"got {idx.numel()}"
        )
    if bool(((idx < 0) | (idx >= num_classes)).any()):
        raise ValueError(
            f"class_activation_map: class_idx must lie in [0, {num_classes}), got {idx.tolist()}"
        )
    w = fc_weight[idx, :k].float()  # (N, K)
    return torch.einsum("nk,nkhw->nhw", w, features.float()).unsqueeze(1)


def _as_nchw(maps: Tensor, where: str) -> Tensor:
    if not isinstance(maps, Tensor):
        raise TypeError(f"{where}: expected a Tensor, got {type(maps).__name__}")
    if maps.dim() == 3:
        return maps.unsqueeze(1)
    if maps.dim() != 4:
        raise ValueError(f"{where}: expected (N, C, h, w) or (N, h, w), got {tuple(maps.shape)}")
    return maps


def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize ``(N, C, h, w)`` (or ``(N, h, w)``) maps to ``size`` (H, W), in float32.

    ``align_corners=False``, as the gates and Grad-CAM upsample. Returns ``(N, C, H, W)``.
    """
    maps = _as_nchw(maps, "upsample_maps").float()
    size = check_size(size, "upsample_maps: size")
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def minmax_maps(maps: Tensor, eps: float = 1e-8) -> Tensor:
    """Min-max normalise each ``(n, c)`` map of ``(N, C, h, w)`` (or ``(N, h, w)``) to [0, 1].

    ``(m - min m) / max(max m - min m, eps)`` per map: a constant map becomes 0. ``eps`` (finite,
    > 0) bounds the divisor. The one min-max of the package: Grad-CAM, CARE, the saliency boxes and
    the overlays all normalise through it.

    Returns:
        ``(N, C, h, w)`` in float32 (float64 for a float64 input).
    """
    eps = check_real(eps, "eps", "minmax_maps", low=0.0, low_open=True)
    maps = _as_nchw(maps, "minmax_maps")
    maps = maps.to(torch.promote_types(maps.dtype, torch.float32))
    lo = maps.amin(dim=(2, 3), keepdim=True)
    hi = maps.amax(dim=(2, 3), keepdim=True)
    return (maps - lo) / (hi - lo).clamp_min(eps)


def overlay_maps(
    maps: Mapping[str, Tensor] | Tensor,
    size: tuple[int, int],
    *,
    normalize: bool = True,
    reduce_channels: bool = True,
) -> dict[str, Tensor] | Tensor:
    """Prepare attention maps for overlaying on images of ``size`` ``(H, W)``.

    Each map is averaged over its channels (``reduce_channels``; ARL masks have C channels, the
    gates one), upsampled bilinearly to ``size`` and, with ``normalize``, min-max normalised per
    image.

    Args:
        maps: one ``(N, C, h, w)`` tensor or the dict filled by :func:`attnblocks.record_attention`.
        size: the image size ``(H, W)``.

    Returns:
        The same structure with ``(N, 1, H, W)`` float32 maps (``(N, C, H, W)`` without
        ``reduce_channels``).

    Example:
        >>> overlay_maps({"gates.0": torch.rand(2, 1, 28, 28)}, (224, 224))["gates.0"].shape
        torch.Size([2, 1, 224, 224])
    """

    check_flag(normalize, "normalize", "overlay_maps")
    check_flag(reduce_channels, "reduce_channels", "overlay_maps")
    size = check_size(size, "overlay_maps: size")

    def prepare(m: Tensor) -> Tensor:
        m = _as_nchw(m, "overlay_maps").float()
        if reduce_channels:
            m = m.mean(dim=1, keepdim=True)
        m = upsample_maps(m, size)
        return minmax_maps(m) if normalize else m

    if isinstance(maps, Tensor):
        return prepare(maps)
    if not isinstance(maps, Mapping):
        raise TypeError(f"overlay_maps: expected a Tensor or a dict of them, got {type(maps)}")
    return {name: prepare(m) for name, m in maps.items()}
