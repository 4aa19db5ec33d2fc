"""examples/compare_runs.py: means, spreads and the two-sample t-test of repeated runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from examples import compare_runs


def _write(tmp_path: Path, name: str, mel: float, sk: float) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({
        "melanoma": {"auc": mel, "accuracy": 0.8}, "seborrheic_keratosis": {"auc": sk},
        "mean_auc": (mel + sk) / 2,
    }))  # fmt: skip
    return path


def test_t_test_matches_the_formula(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a_mel, b_mel = [0.86, 0.88, 0.87, 0.89], [0.84, 0.85, 0.83]
    a = [_write(tmp_path, f"a{i}", m, 0.95) for i, m in enumerate(a_mel)]
    b = [_write(tmp_path, f"b{i}", m, 0.94 + 0.01 * i) for i, m in enumerate(b_mel)]
    rows = compare_runs.main(["--a", *map(str, a), "--b", *map(str, b), "--names", "ARL", "ResNet",
                              "--metrics", "melanoma.auc", "mean_auc"])  # fmt: skip
    r = rows[0]
    xa, xb = np.array(a_mel), np.array(b_mel)
    na, nb = len(xa), len(xb)
    pooled = ((na - 1) * xa.var(ddof=1) + (nb - 1) * xb.var(ddof=1)) / (na + nb - 2)
    t = (xa.mean() - xb.mean()) / math.sqrt(pooled * (1 / na + 1 / nb))
    assert r["metric"] == "melanoma.auc" and r["t"] == pytest.approx(t)
    assert r["mean_a"] == pytest.approx(0.875) and r["std_a"] == pytest.approx(xa.std(ddof=1))
    assert r["diff"] == pytest.approx(0.875 - 0.84)
    assert 0 < r["p"] < 0.05  # clearly separated groups
    assert [x["metric"] for x in rows] == ["melanoma.auc", "mean_auc"]
    printed = capsys.readouterr().out
    assert "ARL" in printed and "melanoma.auc" in printed and "Student" in printed
    welch = compare_runs.compare(compare_runs.load_runs(a), compare_runs.load_runs(b),
                                 ["melanoma.auc"], welch=True)[0]  # fmt: skip
    se = math.sqrt(xa.var(ddof=1) / na + xb.var(ddof=1) / nb)
    assert welch["t"] == pytest.approx((xa.mean() - xb.mean()) / se)


def test_all_common_metrics_and_errors(tmp_path: Path) -> None:
    a = [_write(tmp_path, f"a{i}", 0.8 + 0.01 * i, 0.9) for i in range(2)]
    b = [_write(tmp_path, f"b{i}", 0.7 + 0.02 * i, 0.9 + 0.01 * i) for i in range(2)]
    rows = compare_runs.compare(compare_runs.load_runs(a), compare_runs.load_runs(b))
    assert {r["metric"] for r in rows} == {
        "mean_auc", "melanoma.accuracy", "melanoma.auc", "seborrheic_keratosis.auc",
    }  # fmt: skip
    acc = next(r for r in rows if r["metric"] == "melanoma.accuracy")  # 0.8 in every run
    assert math.isnan(acc["t"]) and math.isnan(acc["p"]) and acc["diff"] == 0
    assert "nan" in compare_runs.format_comparison(rows)
    with pytest.raises(ValueError, match="at least 2 runs"):
        compare_runs.compare(compare_runs.load_runs(a[:1]), compare_runs.load_runs(b))
    with pytest.raises(ValueError, match="not in every run"):
        compare_runs.compare(compare_runs.load_runs(a), compare_runs.load_runs(b), ["nope"])
    with pytest.raises(ValueError, match="no metrics file"):
        compare_runs.load_runs([tmp_path / "missing.json"])
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        compare_runs.load_runs([bad])
