"""ISIC evaluation metrics (scikit-learn ranking metrics) and the official prediction CSV writer.

- :func:`binary_metrics`: AUC, average precision, and accuracy/sensitivity/specificity of
  ``score > threshold`` (strictly greater, like the official ``isic-challenge-scoring``).
- :func:`isic2017_metrics`: both ISIC 2017 tasks and their ``mean_auc`` (the challenge score).
- :func:`multiclass_metrics`: per-class one-vs-rest AUC/AP and recall, ``mean_auc``,
  ``balanced_accuracy`` (mean per-class recall of the arg-max prediction, the ISIC 2018 score),
  accuracy and the confusion matrix.
- :func:`bootstrap_auc_ci` (and ``bootstrap=N`` of the functions above): a stratified percentile
  bootstrap 95 % confidence interval of the AUC, vectorised over the resamples.
- :func:`sensitivity_at_specificity`: sensitivity at fixed specificities (0.80, 0.90, 0.95),
  linearly interpolated on the ROC curve.
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

from ..run.files import atomic_write

__all__ = [
    "SPECIFICITIES",
    "attention_jaccard",
    "auc_from_counts",
    "binary_metrics",
    "bootstrap_auc_ci",
    "bootstrap_counts",
    "ci_method",
    "isic2017_metrics",
    "isic2017_scores_from_3class",
    "multiclass_metrics",
    "percentile_interval",
    "sensitivity_at_specificity",
    "write_predictions_csv",
]


def _np(x: Tensor | np.ndarray | Sequence, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().float().cpu().numpy()
    out = np.asarray(x, dtype=np.float64)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return out


# --- confidence intervals and operating points --------------------------------------------------

SPECIFICITIES = (0.80, 0.90, 0.95)
CI_METHOD = "stratified percentile bootstrap"


def _spec_key(spec: float) -> str:
    return f"{spec:.2f}"


def sensitivity_at_specificity(
    y_true: Tensor | np.ndarray | Sequence,
    y_score: Tensor | np.ndarray | Sequence,
    specificities: Sequence[float] = SPECIFICITIES,
) -> dict[str, float]:
    """Sensitivity read off the ROC curve at fixed specificities: ``{"0.80": sens, ...}``.

    The ROC curve is every operating point of ``score >= t`` (``sklearn.metrics.roc_curve`` with
    all thresholds kept). At ``FPR = 1 - specificity`` the sensitivity is interpolated linearly
    between the two neighbouring operating points (a vertical segment at exactly that FPR gives
    its top); this is the sensitivity of a threshold randomised between those two points. ``nan``
    when ``y_true`` holds a single class.
    """
    from sklearn.metrics import roc_curve

    t, s = _np(y_true, "y_true"), _np(y_score, "y_score")
    if t.ndim != 1 or t.shape != s.shape:
        raise ValueError(
            "sensitivity_at_specificity expects y_true and y_score of shape (N,), got "
            f"{t.shape}, {s.shape}"
        )
    specs = [float(v) for v in specificities]
    if any(not 0 <= v <= 1 for v in specs):
        raise ValueError(f"specificities must lie in [0, 1], got {list(specificities)}")
    pos = t == 1
    if not (pos.any() and (~pos).any()):
        return {_spec_key(v): float("nan") for v in specs}
    fpr, tpr, _ = roc_curve(t, s, drop_intermediate=False)
    out = {}
    for spec in specs:
        f = 1.0 - spec
        k = int(np.searchsorted(fpr, f + 1e-12, side="right")) - 1  # last point with FPR <= f
        if k >= len(fpr) - 1 or fpr[k] >= f - 1e-12:
            sens = tpr[k]
        else:
            sens = tpr[k] + (tpr[k + 1] - tpr[k]) * (f - fpr[k]) / (fpr[k + 1] - fpr[k])
        out[_spec_key(spec)] = float(sens)
    return out


def _check_bootstrap(n_resamples: int, level: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer):
        raise TypeError(f"bootstrap resamples must be an int, got {n_resamples!r}")
    if n_resamples < 2:
        raise ValueError(f"bootstrap needs at least 2 resamples, got {n_resamples}")
    if not 0 < level < 1:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")


def bootstrap_counts(strata: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """``(B, N)`` int32: how often each of ``N`` cases is drawn in each of ``B`` resamples.

    Stratified: each resample draws, with replacement, as many cases from every stratum (equal
    values of ``strata``, e.g. the class label) as the stratum holds, so class counts are fixed.
    """
    strata = np.asarray(strata)
    if strata.ndim == 2:  # one row per case (multi-label truth): stratify by the row pattern
        strata = np.unique(strata, axis=0, return_inverse=True)[1].reshape(-1)
    n = len(strata)
    rng = np.random.default_rng(seed)
    flat = np.empty((n_resamples, n), dtype=np.int64)
    col = 0
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        draws = members[rng.integers(0, len(members), size=(n_resamples, len(members)))]
        flat[:, col : col + len(members)] = draws
        col += len(members)
    flat += (np.arange(n_resamples, dtype=np.int64) * n)[:, None]
    counts = np.bincount(flat.reshape(-1), minlength=n_resamples * n)
    return counts.reshape(n_resamples, n).astype(np.int32)


def auc_from_counts(y_true: np.ndarray, y_score: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """ROC AUC of every resample given by ``counts`` (``(B, N)`` case weights), vectorised.

    ``AUC = sum_u W+_u (W-_{<u} + W-_u / 2) / (W+ W-)`` over the distinct scores ``u`` (ties count
    one half, as in ``roc_auc_score``); ``nan`` where a resample lacks a class.
    """
    t = np.asarray(y_true, dtype=np.float64).reshape(-1) == 1
    s = np.asarray(y_score, dtype=np.float64).reshape(-1)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    w = counts[:, order].astype(np.float64)
    pos = np.add.reduceat(w * t[order], starts, axis=1)
    neg = np.add.reduceat(w * ~t[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    """``[lo, hi]``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles (nan ignored)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def bootstrap_auc_ci(
    y_true: Tensor | np.ndarray | Sequence,
    y_score: Tensor | np.ndarray | Sequence,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> list[float]:
    """``[lo, hi]``: stratified percentile bootstrap confidence interval of the ROC AUC.

    Positives and negatives are resampled with replacement separately (their counts stay fixed,
    so every resample has an AUC); the interval is the percentiles of the ``n_resamples`` AUCs.
    Seeded by ``seed`` (``numpy.random.default_rng``). ``[nan, nan]`` for a single class.
    """
    _check_bootstrap(n_resamples, level)
    t, s = _np(y_true, "y_true"), _np(y_score, "y_score")
    if t.ndim != 1 or t.shape != s.shape:
        raise ValueError(
            f"bootstrap_auc_ci expects y_true and y_score of shape (N,), got {t.shape}, {s.shape}"
        )
    if not ((t == 1).any() and (t != 1).any()):
        return [float("nan"), float("nan")]
    counts = bootstrap_counts(t, n_resamples, seed)
    return percentile_interval(auc_from_counts(t, s, counts), level)


def binary_metrics(
    y_true: Tensor | np.ndarray | Sequence,
    y_score: Tensor | np.ndarray | Sequence,
    threshold: float = 0.5,
    *,
    specificities: Sequence[float] = SPECIFICITIES,
    bootstrap: int = 0,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """AUC, AP, accuracy, sensitivity and specificity of one binary task.

    Args:
        y_true: ``(N,)`` labels in {0, 1}.
        y_score: ``(N,)`` scores (probabilities); predicted positive when ``score > threshold``.
        specificities: adds ``"sensitivity_at_specificity": {"0.80": ..}`` read off the ROC curve
            (:func:`sensitivity_at_specificity`); empty: left out.
        bootstrap: resamples of the AUC confidence interval (:func:`bootstrap_auc_ci`), added as
            ``"auc_ci": [lo, hi]``; 0: none. ``seed`` and ``level`` (0.95) go with it.

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
    out: dict = {
        "auc": float(roc_auc_score(t, s)) if both else float("nan"),
        "ap": float(average_precision_score(t, s)) if both else float("nan"),
        "accuracy": float((pos == pred).mean()) if len(t) else float("nan"),
        "sensitivity": float(pred[pos].mean()) if pos.any() else float("nan"),
        "specificity": float((~pred[~pos]).mean()) if (~pos).any() else float("nan"),
    }
    if specificities:
        out["sensitivity_at_specificity"] = sensitivity_at_specificity(t, s, specificities)
    if bootstrap:
        out["auc_ci"] = bootstrap_auc_ci(t, s, bootstrap, seed, level)
    return out


def ci_method(bootstrap: int, seed: int, level: float = 0.95) -> str:
    """The text ``metrics.json`` stores next to the intervals (``auc_ci_method``)."""
    return f"{CI_METHOD}, {bootstrap} resamples, seed {seed}, {level:.0%} percentile interval"


def isic2017_metrics(
    y_true: Tensor | np.ndarray,
    y_score: Tensor | np.ndarray,
    threshold: float = 0.5,
    tasks: Sequence[str] = ("melanoma", "seborrheic_keratosis"),
    *,
    specificities: Sequence[float] = SPECIFICITIES,
    bootstrap: int = 0,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Both ISIC 2017 tasks: ``{"melanoma": {...}, "seborrheic_keratosis": {...}, "mean_auc"}``.

    ``y_true`` and ``y_score`` are ``(N, 2)``, columns in ``tasks`` order (the CSV columns);
    ``mean_auc`` is the 2017 challenge score. ``specificities``: see :func:`binary_metrics`.
    With ``bootstrap`` resamples, every task gains ``"auc_ci"`` and the result ``"mean_auc_ci"``
    and ``"auc_ci_method"``: the images are resampled together, stratified by their truth row
    (each task's positive count stays fixed), and ``mean_auc_ci`` is the interval of the
    resamples' mean AUC.
    """
    t, s = _np(y_true, "y_true"), _np(y_score, "y_score")
    if t.ndim != 2 or t.shape != s.shape or t.shape[1] != len(tasks):
        raise ValueError(
            f"isic2017_metrics expects y_true, y_score of shape (N, {len(tasks)}), got "
            f"{t.shape}, {s.shape}"
        )
    out: dict = {
        task: binary_metrics(t[:, k], s[:, k], threshold, specificities=specificities)
        for k, task in enumerate(tasks)
    }
    out["mean_auc"] = float(np.mean([out[task]["auc"] for task in tasks]))
    if bootstrap:
        _check_bootstrap(bootstrap, level)
        counts = bootstrap_counts(t, bootstrap, seed)
        aucs = np.stack([auc_from_counts(t[:, k], s[:, k], counts) for k in range(len(tasks))])
        for k, task in enumerate(tasks):
            out[task]["auc_ci"] = percentile_interval(aucs[k], level)
        out["mean_auc_ci"] = percentile_interval(aucs.mean(0), level)
        out["auc_ci_method"] = ci_method(bootstrap, seed, level)
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
    *,
    specificities: Sequence[float] = SPECIFICITIES,
    bootstrap: int = 0,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Multi-class metrics of ``probs`` ``(N, K)`` against labels ``(N,)`` or one-hot ``(N, K)``.

    Returns ``{"per_class": {name: {"auc", "ap", "recall", "sensitivity_at_specificity"}},
    "mean_auc", "balanced_accuracy", "accuracy", "confusion_matrix" (K x K list, rows = truth)}``.
    Per-class AUC/AP and sensitivity at ``specificities`` are one-vs-rest (``nan`` for a class
    absent from ``y_true``); recall uses the arg-max prediction. With ``bootstrap`` resamples
    (stratified by class), every class gains ``"auc_ci"`` and the result ``"mean_auc_ci"`` (the
    resamples' mean over the classes present) and ``"auc_ci_method"``.
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
        if specificities:
            per_class[name]["sensitivity_at_specificity"] = sensitivity_at_specificity(
                pos.astype(np.float64), p[:, c], specificities
            )
    out = {
        "per_class": per_class,
        "mean_auc": float(np.nanmean([v["auc"] for v in per_class.values()])),
        "balanced_accuracy": float(balanced_accuracy_score(t, pred)),
        "accuracy": float((pred == t).mean()),
        "confusion_matrix": confusion_matrix(t, pred, labels=list(range(k))).tolist(),
    }
    if bootstrap:
        _check_bootstrap(bootstrap, level)
        counts = bootstrap_counts(t, bootstrap, seed)
        present = [c for c in range(k) if (t == c).any() and (t != c).any()]
        aucs = {c: auc_from_counts(t == c, p[:, c], counts) for c in present}
        for c, name in enumerate(class_names):
            ci = percentile_interval(aucs[c], level) if c in aucs else [float("nan")] * 2
            per_class[name]["auc_ci"] = ci
        mean = np.mean([aucs[c] for c in present], axis=0) if present else np.array([np.nan])
        out["mean_auc_ci"] = percentile_interval(mean, level)
        out["auc_ci_method"] = ci_method(bootstrap, seed, level)
    return out


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
