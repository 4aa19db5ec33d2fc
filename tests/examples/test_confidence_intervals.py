"""Bootstrap confidence intervals of the AUC and sensitivity at fixed specificities
(examples/isic/eval/), as metrics.json and compare_runs.py report them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from examples import compare_runs
from examples.isic.eval.bootstrap import auc_from_counts, bootstrap_auc_ci, bootstrap_counts
from examples.isic.eval.metrics import (
    binary_metrics,
    isic2017_metrics,
    multiclass_metrics,
    sensitivity_at_specificity,
)
from examples.isic.eval.report import format_multiclass_table, format_table


def _scores(n: int, seed: int = 0, prevalence: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores with a real but imperfect signal (population AUC about 0.76)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(float)
    y[:2] = (0, 1)
    return y, rng.normal(size=n) + y


def test_sensitivity_at_specificity_by_hand() -> None:
    # 10 negatives at 0.0 .. 0.9; positives at 0.85, 0.75, 0.55 and 0.3 (tied with a negative).
    # ROC points (FPR, TPR): (0, 0) (.1, 0) (.1, .25) (.2, .25) (.2, .5) (.3, .5) (.4, .5) (.4, .75)
    # (.5, .75) (.6, .75) (.7, 1) ... : the tie at 0.3 is a sloped segment.
    neg = np.arange(10) / 10
    pos = np.array([0.85, 0.75, 0.55, 0.3])
    y = np.r_[np.zeros(10), np.ones(4)]
    s = np.r_[neg, pos]
    got = sensitivity_at_specificity(y, s, (0.80, 0.90, 0.95, 0.35, 0.65))
    # FPR 0.2 and 0.1 sit on vertical segments (their top); FPR 0.05 between (0, 0) and (.1, 0);
    # specificity 0.35 = FPR 0.65, half-way along the sloped segment (.6, .75) -> (.7, 1);
    # specificity 0.65 = FPR 0.35, on the flat segment (.3, .5) -> (.4, .5)
    assert got == pytest.approx({"0.80": 0.5, "0.90": 0.25, "0.95": 0.0, "0.35": 0.875,
                                 "0.65": 0.5}, abs=1e-12)  # fmt: skip
    m = binary_metrics(y, s)
    assert m["sensitivity_at_specificity"] == {"0.80": 0.5, "0.90": 0.25, "0.95": 0.0}
    assert "auc_ci" not in m  # intervals only when asked for
    assert sensitivity_at_specificity(np.ones(3), [0.1, 0.2, 0.3])["0.90"] != 0.0  # nan
    with pytest.raises(ValueError, match="specificities"):
        sensitivity_at_specificity(y, s, (1.5,))


def test_resampled_auc_equals_sklearn_on_each_resample() -> None:
    y, s = _scores(300, seed=1)
    s = np.round(s, 1)  # many ties
    counts = bootstrap_counts(y, 6, seed=3)
    # stratified: every resample keeps the class counts
    assert (counts.sum(1) == 300).all() and (counts[:, y == 1].sum(1) == y.sum()).all()
    aucs = auc_from_counts(y, s, counts)
    for b in range(6):
        idx = np.repeat(np.arange(300), counts[b])
        assert aucs[b] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)


def test_ci_contains_point_shrinks_with_n_and_is_seeded() -> None:
    y, s = _scores(200)
    point = roc_auc_score(y, s)
    lo, hi = bootstrap_auc_ci(y, s, 1000, seed=0)
    assert lo < point < hi and 0.05 < hi - lo < 0.4
    assert bootstrap_auc_ci(y, s, 1000, seed=0) == [lo, hi]  # deterministic
    assert bootstrap_auc_ci(y, s, 1000, seed=1) != [lo, hi]
    yb, sb = _scores(2000)
    lo_b, hi_b = bootstrap_auc_ci(yb, sb, 1000, seed=0)
    assert lo_b < roc_auc_score(yb, sb) < hi_b
    # ten times the cases: the width falls by about sqrt(10) ~ 3.2
    assert (hi_b - lo_b) < 0.5 * (hi - lo)
    assert bootstrap_auc_ci(np.ones(5), np.arange(5.0)) != bootstrap_auc_ci(y, s)  # nan pair
    with pytest.raises(ValueError, match="at least 2 resamples"):
        bootstrap_auc_ci(y, s, 1)
    with pytest.raises(TypeError, match="int"):
        bootstrap_auc_ci(y, s, True)
    with pytest.raises(ValueError, match="level"):
        bootstrap_auc_ci(y, s, 10, level=1.0)


def test_600_images_2000_resamples_well_under_a_second() -> None:
    y, s = _scores(600)
    bootstrap_auc_ci(y, s, 50)  # warm-up
    t0 = time.perf_counter()
    bootstrap_auc_ci(y, s, 2000)
    assert time.perf_counter() - t0 < 1.0


def test_task_and_class_intervals_and_tables() -> None:
    y, s = _scores(400, seed=2)
    y2, s2 = _scores(400, seed=3, prevalence=0.15)
    truth, scores = np.stack([y, y2 * (1 - y)], 1), np.stack([s, s2], 1)
    m = isic2017_metrics(truth, scores, bootstrap=500, seed=4)
    for k, task in enumerate(("melanoma", "seborrheic_keratosis")):
        lo, hi = m[task]["auc_ci"]
        assert lo < m[task]["auc"] < hi
        # the point values are those without intervals
        plain = binary_metrics(truth[:, k], scores[:, k])
        assert m[task]["auc"] == plain["auc"]
        assert m[task]["sensitivity_at_specificity"] == plain["sensitivity_at_specificity"]
    lo, hi = m["mean_auc_ci"]
    assert lo < m["mean_auc"] < hi
    assert m["auc_ci_method"].startswith("stratified percentile bootstrap, 500 resamples, seed 4")
    # the mean's interval is narrower than the wider task interval (averaging two tasks)
    assert hi - lo < max(np.diff(m[t]["auc_ci"])[0] for t in ("melanoma", "seborrheic_keratosis"))
    table = format_table(m, ["melanoma", "seborrheic_keratosis"])
    assert f"[{m['melanoma']['auc_ci'][0]:.3f}, {m['melanoma']['auc_ci'][1]:.3f}]" in table
    assert "sensitivity at SPE 0.80" in table and "500 resamples" in table

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 300)
    labels[:3] = (0, 1, 2)
    probs = rng.dirichlet(np.ones(3), 300) + np.eye(3)[labels] * 0.3
    probs /= probs.sum(1, keepdims=True)
    mc = multiclass_metrics(labels, probs, ["a", "b", "c"], bootstrap=300, seed=0)
    for name in "abc":
        lo, hi = mc["per_class"][name]["auc_ci"]
        assert lo < mc["per_class"][name]["auc"] < hi
        assert set(mc["per_class"][name]["sensitivity_at_specificity"]) == {"0.80", "0.90", "0.95"}
    assert mc["mean_auc_ci"][0] < mc["mean_auc"] < mc["mean_auc_ci"][1]
    assert "95% CI" in format_multiclass_table(mc)


def test_compare_runs_lists_intervals(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = []
    for i, auc in enumerate((0.80, 0.82, 0.70, 0.71)):
        sas = {"0.80": 0.6 + i / 100, "0.90": 0.5, "0.95": 0.3}
        data = {"melanoma": {"auc": auc, "auc_ci": [auc - 0.05, auc + 0.04],
                             "sensitivity_at_specificity": sas},
                "mean_auc": auc, "mean_auc_ci": [auc - 0.05, auc + 0.04],
                "auc_ci_method": "stratified percentile bootstrap"}  # fmt: skip
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(data))
    found = compare_runs.auc_intervals(paths[:1])[0]
    assert found == {"melanoma.auc": pytest.approx((0.80, 0.75, 0.84)),
                     "mean_auc": pytest.approx((0.80, 0.75, 0.84))}  # fmt: skip
    rows = compare_runs.main(["--a", str(paths[0]), str(paths[1]), "--b", str(paths[2]),
                              str(paths[3]), "--names", "gates", "gap"])  # fmt: skip
    keys = {r["metric"] for r in rows}
    assert "melanoma.sensitivity_at_specificity.0.80" in keys
    sens = next(r for r in rows if r["metric"] == "melanoma.sensitivity_at_specificity.0.80")
    assert sens["mean_a"] == pytest.approx(0.605) and sens["mean_b"] == pytest.approx(0.625)
    printed = capsys.readouterr().out
    assert "95% bootstrap confidence interval" in printed
    assert "0.8200 [0.7700, 0.8600]" in printed and "0.7000 [0.6500, 0.7400]" in printed
