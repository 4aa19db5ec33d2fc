"""ISIC evaluation metrics (scikit-learn ranking metrics) and the official prediction CSV writer.

- :func:`binary_metrics`: AUC, average precision, and accuracy/sensitivity/specificity of
  ``score > threshold`` (strictly greater, like the official ``isic-challenge-scoring``).
- :func:`isic2017_metrics`: both ISIC 2017 tasks and their ``mean_auc`` (the challenge score).
- :func:`multiclass_metrics`: per-class one-vs-rest AUC/AP and recall, ``mean_auc``,
  ``balanced_accuracy`` (mean per-class recall of the arg-max prediction, the ISIC 2018 score),
  accuracy and the confusion matrix.
- :func:`attention_jaccard`: AttnMel Table 3 -- each map min-max normalised to [0, 1], upsampled
  to the mask size, thresholded at 0.5, Jaccard index with the lesion mask.
- :func:`write_predictions_csv`: the official submission format (ground-truth columns), atomic.

The numbers agree with ``isic-challenge-scoring`` on the same files (tested).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .cache import atomic_write

__all__ = [
    "attention_jaccard",
    "binary_metrics",
    "isic2017_metrics",
    "isic2017_scores_from_3class",
    "multiclass_metrics",
    "write_predictions_csv",
]


def _np(x: Tensor | np.ndarray | Sequence, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().float().cpu().numpy()
    out = np.asarray(x, dtype=np.float64)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return out


def binary_metrics(
    y_true: Tensor | np.ndarray | Sequence,
    y_score: Tensor | np.ndarray | Sequence,
    threshold: float = 0.5,
) -> dict[str, float]:
    """AUC, AP, accuracy, sensitivity and specificity of one binary task.

    Args:
        y_true: ``(N,)`` labels in {0, 1}.
        y_score: ``(N,)`` scores (probabilities); predicted positive when ``score > threshold``.

    AUC and AP are ``nan`` when ``y_true`` holds a single class (undefined), as are sensitivity
    (no positives) and specificity (no negatives).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    t, s = _np(y_true, "y_true"), _np(y_score, "y_score")
    if t.ndim != 1 or t.shape != s.shape:
        raise ValueError(
            f"binary_metrics expects y_true and y_score of shape (N,), got {t.shape}, {s.shape}"
        )
    if not np.isin(t, (0, 1)).all():
        raise ValueError("binary_metrics: y_true must hold 0/1 labels")
    pos, pred = t == 1, s > threshold
    both = pos.any() and (~pos).any()
    return {
        "auc": float(roc_auc_score(t, s)) if both else float("nan"),
        "ap": float(average_precision_score(t, s)) if both else float("nan"),
        "accuracy": float((pos == pred).mean()) if len(t) else float("nan"),
        "sensitivity": float(pred[pos].mean()) if pos.any() else float("nan"),
        "specificity": float((~pred[~pos]).mean()) if (~pos).any() else float("nan"),
    }


def isic2017_metrics(
    y_true: Tensor | np.ndarray,
    y_score: Tensor | np.ndarray,
    threshold: float = 0.5,
    tasks: Sequence[str] = ("melanoma", "seborrheic_keratosis"),
) -> dict[str, dict[str, float] | float]:
    """Both ISIC 2017 tasks: ``{"melanoma": {...}, "seborrheic_keratosis": {...}, "mean_auc"}``.

    ``y_true`` and ``y_score`` are ``(N, 2)``, columns in ``tasks`` order (the CSV columns);
    ``mean_auc`` is the 2017 challenge score.
    """
    t, s = _np(y_true, "y_true"), _np(y_score, "y_score")
    if t.ndim != 2 or t.shape != s.shape or t.shape[1] != len(tasks):
        raise ValueError(
            f"isic2017_metrics expects y_true, y_score of shape (N, {len(tasks)}), got "
            f"{t.shape}, {s.shape}"
        )
    out: dict[str, dict[str, float] | float] = {
        task: binary_metrics(t[:, k], s[:, k], threshold) for k, task in enumerate(tasks)
    }
    out["mean_auc"] = float(np.mean([out[task]["auc"] for task in tasks]))
    return out


def isic2017_scores_from_3class(probs: Tensor | np.ndarray) -> np.ndarray:
    """``(N, 3)`` probabilities in ``ISIC2017Dataset(task="3class")`` order (nevus, melanoma,
    seborrheic keratosis) -> ``(N, 2)`` scores ``[melanoma, seborrheic_keratosis]``."""
    p = _np(probs, "probs")
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"expected (N, 3) probabilities, got {p.shape}")
    return p[:, 1:3]


def multiclass_metrics(
    y_true: Tensor | np.ndarray | Sequence,
    probs: Tensor | np.ndarray,
    class_names: Sequence[str],
) -> dict:
    """Multi-class metrics of ``probs`` ``(N, K)`` against labels ``(N,)`` or one-hot ``(N, K)``.

    Returns ``{"per_class": {name: {"auc", "ap", "recall"}}, "mean_auc", "balanced_accuracy",
    "accuracy", "confusion_matrix" (K x K list, rows = truth)}``. Per-class AUC/AP are one-vs-rest
    (``nan`` for a class absent from ``y_true``); recall uses the arg-max prediction.
    """
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        confusion_matrix,
        roc_auc_score,
    )

    p = _np(probs, "probs")
    t = _np(y_true, "y_true")
    k = len(class_names)
    if p.ndim != 2 or p.shape[1] != k:
        raise ValueError(f"probs must be (N, {k}) for classes {list(class_names)}, got {p.shape}")
    if t.ndim == 2:
        t = t.argmax(1)
    t = t.astype(np.int64)
    if t.shape != (p.shape[0],) or t.min(initial=0) < 0 or t.max(initial=0) >= k:
        raise ValueError(f"y_true must be (N,) labels in [0, {k}) or (N, {k}) one-hot")
    pred = p.argmax(1)
    per_class = {}
    for c, name in enumerate(class_names):
        pos = t == c
        both = pos.any() and (~pos).any()
        per_class[name] = {
            "auc": float(roc_auc_score(pos, p[:, c])) if both else float("nan"),
            "ap": float(average_precision_score(pos, p[:, c])) if both else float("nan"),
            "recall": float((pred[pos] == c).mean()) if pos.any() else float("nan"),
        }
    return {
        "per_class": per_class,
        "mean_auc": float(np.nanmean([v["auc"] for v in per_class.values()])),
        "balanced_accuracy": float(balanced_accuracy_score(t, pred)),
        "accuracy": float((pred == t).mean()),
        "confusion_matrix": confusion_matrix(t, pred, labels=list(range(k))).tolist(),
    }


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


def write_predictions_csv(
    path: str | os.PathLike,
    ids: Sequence[str],
    probs: Tensor | np.ndarray,
    columns: Sequence[str],
    id_column: str = "image",
) -> Path:
    """Write predictions in the official submission format, atomically.

    Header ``id_column,<columns>``: ISIC 2017 uses ``image_id,melanoma,seborrheic_keratosis``,
    ISIC 2018 ``image,MEL,NV,...`` (the datasets' ``csv_id_column`` and ``csv_columns``).
    ``probs`` is ``(N, len(columns))`` in [0, 1]. Written to a temporary file in the same folder,
    then renamed.
    """
    p = _np(probs, "probs")
    if p.ndim == 1 and len(columns) == 1:
        p = p[:, None]
    if p.shape != (len(ids), len(columns)):
        raise ValueError(
            f"probs must be ({len(ids)}, {len(columns)}) for {len(ids)} ids and columns "
            f"{list(columns)}, got {p.shape}"
        )
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    if len(set(ids)) != len(ids):
        raise ValueError("write_predictions_csv: duplicate image ids")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([id_column, *columns])
    for image_id, row in zip(ids, p, strict=True):
        writer.writerow([image_id, *(repr(float(v)) for v in row)])
    path = Path(path)
    atomic_write(path, lambda fh: fh.write(buf.getvalue().encode()))
    return path
