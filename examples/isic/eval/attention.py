"""Agreement of attention maps with lesion masks: the attention Jaccard of AttnMel's Table 3."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attention_jaccard"]


def attention_jaccard(
    maps: Tensor,
    masks: Tensor,
    threshold: float = 0.5,
    valid: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Jaccard index of thresholded attention maps with lesion masks (AttnMel Table 3).

    Each map is min-max normalised to [0, 1] per image (a constant map becomes 0), upsampled
    bilinearly to the mask size, thresholded (``> threshold``) and compared with ``mask > 0.5``:
    ``J = |A & M| / |A | M|`` (1 when both are empty).

    Args:
        maps: ``(N, 1, h, w)`` or ``(N, h, w)`` attention maps.
        masks: ``(N, 1, H, W)`` or ``(N, H, W)`` lesion masks.
        valid: optional ``(N,)`` bool, images to score (e.g. ``has_mask``).
        reduction: ``"mean"`` (scalar over valid images) or ``"none"`` (``(N,)``, invalid = nan).
    """
    if maps.ndim == 3:
        maps = maps[:, None]
    if masks.ndim == 3:
        masks = masks[:, None]
    if (
        maps.ndim != 4
        or masks.ndim != 4
        or maps.shape[:2] != (masks.shape[0], 1)
        or masks.shape[1] != 1
    ):
        raise ValueError(
            f"attention_jaccard expects maps (N, 1, h, w) and masks (N, 1, H, W), got "
            f"{tuple(maps.shape)} and {tuple(masks.shape)}"
        )
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    a = maps.detach().float()
    lo = a.amin(dim=(2, 3), keepdim=True)
    span = a.amax(dim=(2, 3), keepdim=True) - lo
    a = torch.where(span > 0, (a - lo) / span.clamp_min(1e-12), torch.zeros_like(a))
    a = F.interpolate(a, size=masks.shape[-2:], mode="bilinear", align_corners=False) > threshold
    m = masks.detach().float() > 0.5
    inter = (a & m).sum(dim=(1, 2, 3)).float()
    union = (a | m).sum(dim=(1, 2, 3)).float()
    j = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    if valid is not None:
        valid = valid.to(j.device).bool().reshape(-1)
        j = torch.where(valid, j, torch.full_like(j, float("nan")))
    return j.nanmean() if reduction == "mean" else j
