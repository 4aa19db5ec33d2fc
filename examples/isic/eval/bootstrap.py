"""Stratified percentile bootstrap confidence intervals of the AUC, vectorised over the resamples.

- :func:`bootstrap_auc_ci`: the 95 % interval of one binary AUC.
- :func:`bootstrap_counts`, :func:`auc_from_counts`, :func:`percentile_interval`: the pieces, shared
  by the metric functions of :mod:`examples.isic.eval.metrics` (``bootstrap=N``).
- :func:`ci_method`: the text ``metrics.json`` stores next to the intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from .arrays import as_finite_array

__all__ = [
    "CI_METHOD",
    "auc_from_counts",
    "bootstrap_auc_ci",
    "bootstrap_counts",
    "ci_method",
    "percentile_interval",
]

CI_METHOD = "stratified percentile bootstrap"


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
    t, s = as_finite_array(y_true, "y_true"), as_finite_array(y_score, "y_score")
    if t.ndim != 1 or t.shape != s.shape:
        raise ValueError(
            f"bootstrap_auc_ci expects y_true and y_score of shape (N,), got {t.shape}, {s.shape}"
        )
    if not ((t == 1).any() and (t != 1).any()):
        return [float("nan"), float("nan")]
    counts = bootstrap_counts(t, n_resamples, seed)
    return percentile_interval(auc_from_counts(t, s, counts), level)


def ci_method(bootstrap: int, seed: int, level: float = 0.95) -> str:
    """The text ``metrics.json`` stores next to the intervals (``auc_ci_method``)."""
    return f"{CI_METHOD}, {bootstrap} resamples, seed {seed}, {level:.0%} percentile interval"
