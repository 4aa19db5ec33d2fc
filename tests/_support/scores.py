"""A script's ``predictions.csv`` and ``metrics.json`` checked against the official ground truth:
every number of ``metrics.json`` recomputed from the predictions with scikit-learn."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest


def read_scores_and_truth(
    predictions: Path, ground_truth: Path
) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """A script's ``predictions.csv`` and the official ground truth of the same images.

    Both files are official-format CSVs (id column, then one column per task or class). Returns the
    prediction ids, the prediction columns, the ``(N, K)`` scores and the ``(N, K)`` 0/1 truth of
    those columns, rows in ``predictions.csv`` order.
    """
    with open(predictions, newline="") as f:
        rows = list(csv.reader(f))
    id_column, *columns = rows[0]
    ids = [r[0] for r in rows[1:]]
    scores = np.array([[float(v) for v in r[1:]] for r in rows[1:]], dtype=np.float64)
    with open(ground_truth, newline="") as f:
        truth_rows = {r[id_column]: r for r in csv.DictReader(f)}
    truth = np.array([[float(truth_rows[i][c]) for c in columns] for i in ids], dtype=np.float64)
    return ids, columns, scores, truth


def assert_task_metrics_agree(
    saved: dict, columns: list[str], scores: np.ndarray, truth: np.ndarray
) -> None:
    """``metrics.json`` of a binary-task script (ISIC 2017) matches its ``predictions.csv``.

    Per task column: AUC, average precision and the accuracy of ``score > 0.5``; then the mean AUC.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    aucs = []
    for k, task in enumerate(columns):
        auc = roc_auc_score(truth[:, k], scores[:, k])
        aucs.append(auc)
        assert saved[task]["auc"] == pytest.approx(auc, abs=1e-6), task
        ap = average_precision_score(truth[:, k], scores[:, k])
        assert saved[task]["ap"] == pytest.approx(ap, abs=1e-6), task
        accuracy = np.mean((scores[:, k] > 0.5) == (truth[:, k] == 1))
        assert saved[task]["accuracy"] == pytest.approx(accuracy, abs=1e-6), task
    assert saved["mean_auc"] == pytest.approx(np.mean(aucs), abs=1e-6)
    from examples.isic.eval.metrics import isic2017_metrics

    # the bootstrap intervals and the sensitivities at fixed specificities, recomputed
    resamples, seed = bootstrap_settings(saved)
    ref = isic2017_metrics(truth, scores, tasks=columns, bootstrap=resamples, seed=seed)
    for task in columns:
        lo, hi = saved[task]["auc_ci"]
        assert lo - 1e-9 <= saved[task]["auc"] <= hi + 1e-9, task
        assert saved[task]["auc_ci"] == pytest.approx(ref[task]["auc_ci"], abs=1e-9), task
        sas = saved[task]["sensitivity_at_specificity"]
        assert set(sas) == {"0.80", "0.90", "0.95"}
        assert sas == pytest.approx(ref[task]["sensitivity_at_specificity"], abs=1e-9), task
    assert saved["mean_auc_ci"] == pytest.approx(ref["mean_auc_ci"], abs=1e-9)


def bootstrap_settings(saved: dict) -> tuple[int, int]:
    """Resamples and seed of the intervals of a ``metrics.json`` (its ``auc_ci_method``)."""
    found = re.search(r"(\d+) resamples, seed (\d+)", saved["auc_ci_method"])
    assert found, saved["auc_ci_method"]
    return int(found[1]), int(found[2])


def assert_multiclass_metrics_agree(
    saved: dict, columns: list[str], scores: np.ndarray, truth: np.ndarray
) -> None:
    """``metrics.json`` of a multi-class script (ISIC 2018) matches its ``predictions.csv``.

    Balanced accuracy and accuracy of the arg-max class, the confusion matrix, and the one-vs-rest
    AUC of every class present with both outcomes (``nan`` in ``metrics.json`` otherwise) and their
    mean.
    """
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

    labels, pred = truth.argmax(1), scores.argmax(1)
    assert saved["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(labels, pred), abs=1e-6
    )
    assert saved["accuracy"] == pytest.approx(np.mean(labels == pred), abs=1e-6)
    expected = confusion_matrix(labels, pred, labels=list(range(len(columns))))
    assert saved["confusion_matrix"] == expected.tolist()
    aucs = {}
    for c, name in enumerate(columns):
        positive = labels == c
        if positive.any() and not positive.all():
            aucs[name] = roc_auc_score(positive, scores[:, c])
    assert aucs, "no class with both outcomes among the predictions"
    for name in columns:
        expected_auc = aucs.get(name, float("nan"))
        assert saved["per_class"][name]["auc"] == pytest.approx(
            expected_auc, abs=1e-6, nan_ok=True
        ), name
    assert saved["mean_auc"] == pytest.approx(np.mean(list(aucs.values())), abs=1e-6)
    from examples.isic.eval.metrics import multiclass_metrics

    # the bootstrap intervals and the sensitivities at fixed specificities, recomputed
    resamples, seed = bootstrap_settings(saved)
    ref = multiclass_metrics(labels, scores, columns, bootstrap=resamples, seed=seed)
    for name in columns:
        got, want = saved["per_class"][name], ref["per_class"][name]
        assert got["auc_ci"] == pytest.approx(want["auc_ci"], abs=1e-9, nan_ok=True), name
        if name in aucs:
            assert got["auc_ci"][0] - 1e-9 <= got["auc"] <= got["auc_ci"][1] + 1e-9, name
        assert got["sensitivity_at_specificity"] == pytest.approx(
            want["sensitivity_at_specificity"], abs=1e-9, nan_ok=True
        ), name
    assert saved["mean_auc_ci"] == pytest.approx(ref["mean_auc_ci"], abs=1e-9)
