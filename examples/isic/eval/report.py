"""Turning predictions into the papers' tables: metric functions for the engine, the printed table
and ``OUT/metrics.json``.

- :func:`isic2017_metric_fn`: the engine's ``metric_fn`` for the ISIC 2017 set-ups (binary task
  or 3-class; flat dict, with ``mean_auc``).
- :func:`flatten_metrics`: ``{"melanoma": {"auc": ..}}`` -> ``{"melanoma_auc": ..}``.
- :func:`format_table`: the ARL paper's Table III layout (AUC, ACC, SEN, SPE per task, plus AP).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .metrics import isic2017_metrics, isic2017_scores, isic2017_tasks

__all__ = [
    "epoch_title",
    "flatten_metrics",
    "format_multiclass_table",
    "format_table",
    "isic2017_metric_fn",
]


def epoch_title(epoch: int, select: str) -> str:
    """How a results table names the epoch it tested: ``best epoch 3 by validation AUC`` or
    ``last epoch 7``."""
    return f"best epoch {epoch} by validation AUC" if select == "best" else f"last epoch {epoch}"


def isic2017_metric_fn(
    task: str, threshold: float = 0.5
) -> Callable[[np.ndarray, np.ndarray], dict]:
    """Engine ``metric_fn``: flat ISIC 2017 metrics (``melanoma_auc``, ..., ``mean_auc``)."""
    tasks = isic2017_tasks(task)

    def metric_fn(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        scores, truth = isic2017_scores(probs, targets, task)
        return flatten_metrics(isic2017_metrics(truth, scores, threshold, tasks=tasks))

    return metric_fn


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested dicts of numbers -> one level, keys joined with ``_``; lists are dropped."""
    flat: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(flatten_metrics(v, f"{key}_"))
        elif isinstance(v, int | float | np.floating):
            flat[key] = float(v)
    return flat


def _ci(m: Mapping[str, Any], key: str = "auc_ci") -> str:
    ci = m.get(key)
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _sens_at_spec(name: str, m: Mapping[str, Any]) -> str | None:
    sas = m.get("sensitivity_at_specificity")
    if not sas:
        return None
    parts = "  ".join(f"SPE {k}: {v:.4f}" for k, v in sas.items())
    return f"{name:<22} sensitivity at {parts}"


def format_table(metrics: Mapping[str, Any], tasks: Sequence[str], title: str = "") -> str:
    """Rows per task with AUC, its 95 % CI (when computed), ACC, SEN, SPE (ARL paper Table III)
    and AP, then the mean AUC, then the sensitivity at fixed specificities per task."""
    lines = [title] if title else []
    lines.append(
        f"{'task':<22} {'AUC':>7} {'95% CI':>16} {'ACC':>7} {'SEN':>7} {'SPE':>7} {'AP':>7}"
    )
    for task in tasks:
        m = metrics[task]
        lines.append(
            f"{task:<22} {m['auc']:7.4f} {_ci(m):>16} {m['accuracy']:7.4f} "
            f"{m['sensitivity']:7.4f} {m['specificity']:7.4f} {m['ap']:7.4f}"
        )
    lines.append(
        f"{'average AUC':<22} {metrics['mean_auc']:7.4f} {_ci(metrics, 'mean_auc_ci'):>16}"
    )
    lines += [line for task in tasks if (line := _sens_at_spec(task, metrics[task]))]
    if metrics.get("auc_ci_method"):
        lines.append(f"95% CI: {metrics['auc_ci_method']}")
    return "\n".join(lines)


def format_multiclass_table(metrics: Mapping[str, Any], title: str = "") -> str:
    """Per-class AUC (with its 95 % CI when computed) / AP / recall rows, then mean AUC, balanced
    accuracy and accuracy, then the sensitivity at fixed specificities of the first class (MEL)."""
    lines = [title] if title else []
    lines.append(f"{'class':<10} {'AUC':>7} {'95% CI':>16} {'AP':>7} {'recall':>7}")
    for name, m in metrics["per_class"].items():
        lines.append(f"{name:<10} {m['auc']:7.4f} {_ci(m):>16} {m['ap']:7.4f} {m['recall']:7.4f}")
    lines.append(f"{'mean AUC':<10} {metrics['mean_auc']:7.4f} {_ci(metrics, 'mean_auc_ci'):>16}")
    lines.append(f"{'bal. acc.':<10} {metrics['balanced_accuracy']:7.4f}")
    lines.append(f"{'accuracy':<10} {metrics['accuracy']:7.4f}")
    first = next(iter(metrics["per_class"]), None)
    if first is not None and (line := _sens_at_spec(first, metrics["per_class"][first])):
        lines.append(line)
    if metrics.get("auc_ci_method"):
        lines.append(f"95% CI: {metrics['auc_ci_method']}")
    return "\n".join(lines)
