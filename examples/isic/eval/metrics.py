"""ISIC evaluation metrics (scikit-learn ranking metrics).

- :func:`binary_metrics`: AUC, average precision, and accuracy/sensitivity/specificity of
  ``score > threshold`` (strictly greater, like the official ``isic-challenge-scoring``).
- :func:`isic2017_scores`: class probabilities of an ISIC 2017 set-up (binary task or 3-class)
  -> the official task scores and truth; :func:`isic2017_metrics`: both ISIC 2017 tasks and their
  ``mean_auc`` (the challenge score).
- :func:`multiclass_metrics`: per-class one-vs-rest AUC/AP and recall, ``mean_auc``,
  ``balanced_accuracy`` (mean per-class recall of the arg-max prediction, the ISIC 2018 score),
  accuracy and the confusion matrix.
- :func:`sensitivity_at_specificity`: sensitivity at fixed specificities (0.80, 0.90, 0.95),
  linearly interpolated on the ROC curve.
- ``bootstrap=N`` of the functions above: a stratified percentile bootstrap 95 % confidence
  interval of the AUC (:mod:`examples.isic.eval.bootstrap`).

The numbers agree with ``isic-challenge-scoring`` on the same files (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from .arrays import as_finite_array
from .bootstrap import (
    _check_bootstrap,
    auc_from_counts,
    bootstrap_auc_ci,
    bootstrap_counts,
    ci_method,
    percentile_interval,
)

__all__ = [
    "ISIC2017_COLUMNS",
    "SPECIFICITIES",
    "binary_metrics",
    "isic2017_metrics",
    "isic2017_scores",
    "isic2017_tasks",
    "multiclass_metrics",
    "sensitivity_at_specificity",
]

ISIC2017_COLUMNS = ("melanoma", "seborrheic_keratosis")


# --- confidence intervals and operating points --------------------------------------------------

SPECIFICITIES = (0.80, 0.90, 0.95)


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

    t, s = as_finite_array(y_true, "y_true"), as_finite_array(y_score, "y_score")
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

    t, s = as_finite_array(y_true, "y_true"), as_finite_array(y_score, "y_score")
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
    t, s = as_finite_array(y_true, "y_true"), as_finite_array(y_score, "y_score")
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

    p = as_finite_array(probs, "probs")
    t = as_finite_array(y_true, "y_true")
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


def isic2017_tasks(task: str) -> tuple[str, ...]:
    """The official task columns a dataset ``task`` is scored on."""
    if task in ("both", "3class"):
        return ISIC2017_COLUMNS
    if task in ISIC2017_COLUMNS:
        return (task,)
    raise ValueError(
        f"unknown ISIC 2017 task {task!r}; expected melanoma, seborrheic_keratosis, both"
    )


def isic2017_scores(
    probs: Tensor | np.ndarray, targets: Tensor | np.ndarray, task: str
) -> tuple[np.ndarray, np.ndarray]:
    """Task scores and truth ``(N, T)`` from class probabilities and dataset labels.

    ``task="3class"`` (or ``"both"``): probabilities over (nevus, melanoma, seborrheic keratosis),
    ``ISIC2017Dataset(task="3class")``'s order, labels 0/1/2 -> columns (melanoma, seborrheic
    keratosis). A binary task: probabilities over (other, task), labels 0/1 -> one column,
    ``p(task)``.
    """
    probs, targets = as_finite_array(probs, "probs"), np.asarray(targets)
    if task in ("both", "3class"):
        if probs.ndim != 2 or probs.shape[1] != 3:
            raise ValueError(f"task {task!r} needs (N, 3) probabilities, got {probs.shape}")
        truth = np.stack([targets == 1, targets == 2], axis=1).astype(np.float64)
        return probs[:, 1:3], truth
    isic2017_tasks(task)
    if probs.ndim != 2 or probs.shape[1] != 2:
        raise ValueError(f"binary task {task!r} needs (N, 2) probabilities, got {probs.shape}")
    return probs[:, 1:2], targets.reshape(-1, 1).astype(np.float64)
