"""ISIC metrics: definitions, the prediction CSV writer, agreement with the official scorer."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.isic import (
    ISIC2017Dataset,
    ISIC2018Dataset,
    attention_jaccard,
    binary_metrics,
    isic2017_metrics,
    isic2017_scores,
    multiclass_metrics,
    write_predictions_csv,
)
from tests._support.data import shared_subset

scoring = pytest.importorskip(
    "isic_challenge_scoring", reason="isic-challenge-scoring not installed"
)

pytestmark = pytest.mark.filterwarnings("ignore::Warning:isic_challenge_scoring.*")

# isic-challenge-scoring 5.6 calls DataFrame.applymap, which pandas 3 removed (renamed to map).
_SHIM = (
    "import pandas as pd\n"
    "if not hasattr(pd.DataFrame, 'applymap'): pd.DataFrame.applymap = pd.DataFrame.map\n"
)


@pytest.fixture(autouse=True)
def _pandas3_shim(monkeypatch):
    import pandas as pd

    if not hasattr(pd.DataFrame, "applymap"):
        monkeypatch.setattr(pd.DataFrame, "applymap", pd.DataFrame.map, raising=False)


def test_binary_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.6, 0.7, 0.4, 0.2, 0.5])  # 0.5 is not > 0.5: predicted negative
    m = binary_metrics(y, s)
    # positives 0.7, 0.4, 0.5 vs negatives 0.1, 0.6, 0.2: 7 of 9 pairs ranked right
    assert m["auc"] == pytest.approx(7 / 9)
    assert m["sensitivity"] == pytest.approx(1 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(3 / 6)
    # AP = mean precision at each positive, ranks: 0.7 (1/1), 0.6 neg, 0.5 (2/3), 0.4 (3/4)
    assert m["ap"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert binary_metrics(torch.tensor(y), torch.tensor(s), threshold=0.45)[
        "sensitivity"
    ] == pytest.approx(2 / 3)


def test_binary_metrics_single_class_and_bad_input():
    m = binary_metrics([1, 1], [0.2, 0.9])
    assert math.isnan(m["auc"]) and math.isnan(m["specificity"]) and m["sensitivity"] == 0.5
    with pytest.raises(ValueError, match="shape"):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="0/1"):
        binary_metrics([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics([0, 1], [0.5, float("nan")])


def test_isic2017_metrics_and_3class_scores():
    rng = np.random.default_rng(0)
    y3 = rng.integers(0, 3, 50)
    probs = rng.dirichlet(np.ones(3), 50)
    scores, truth = isic2017_scores(probs, y3, "3class")
    np.testing.assert_array_equal(scores, probs[:, 1:3])
    np.testing.assert_array_equal(truth, np.stack([y3 == 1, y3 == 2], 1).astype(float))
    m = isic2017_metrics(truth, scores)
    assert m["melanoma"] == binary_metrics(y3 == 1, probs[:, 1])
    assert m["seborrheic_keratosis"] == binary_metrics(y3 == 2, probs[:, 2])
    assert m["mean_auc"] == pytest.approx(
        (m["melanoma"]["auc"] + m["seborrheic_keratosis"]["auc"]) / 2
    )
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        isic2017_metrics(truth[:, :1], scores[:, :1])


def test_multiclass_metrics_by_hand():
    y = np.array([0, 0, 1, 2, 2, 2])
    p = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.3, 0.6, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.1, 0.8],
            [0.5, 0.2, 0.3],
            [0.1, 0.2, 0.7],
        ]
    )
    m = multiclass_metrics(y, p, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert m["per_class"]["c"]["recall"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # class b: positive 0.7 above all negatives
    assert m["per_class"]["b"]["auc"] == 1.0
    onehot = np.eye(3)[y]
    assert multiclass_metrics(onehot, p, ["a", "b", "c"]) == m
    with pytest.raises(ValueError, match="probs must be"):
        multiclass_metrics(y, p[:, :2], ["a", "b", "c"])


def test_attention_jaccard_by_hand():
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, :2, :2] = 5.0  # normalised to 1 on the top-left quarter
    maps[1] = 3.0  # constant map -> nothing attended
    masks = torch.zeros(2, 1, 4, 4)
    masks[0, 0, :2, :] = 1  # top half: |A & M| = 4, |A | M| = 8
    masks[1, 0, 0, 0] = 1
    j = attention_jaccard(maps, masks, reduction="none")
    assert j.tolist() == [0.5, 0.0]
    assert float(attention_jaccard(maps, masks)) == pytest.approx(0.25)
    assert float(attention_jaccard(maps, masks, valid=torch.tensor([True, False]))) == 0.5
    # low-resolution maps are upsampled to the mask size
    small = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    big = torch.zeros(1, 1, 8, 8)
    big[..., :4, :4] = 1
    assert float(attention_jaccard(small, big)) > 0.4
    with pytest.raises(ValueError, match="attention_jaccard expects"):
        attention_jaccard(torch.zeros(2, 2, 4, 4), masks)


def test_write_predictions_csv(tmp_path):
    path = write_predictions_csv(
        tmp_path / "out" / "p.csv", ["ISIC_1", "ISIC_2"], np.array([[0.25, 1.0], [0.0, 1 / 3]]),
        ["melanoma", "seborrheic_keratosis"], id_column="image_id",
    )  # fmt: skip
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["image_id", "melanoma", "seborrheic_keratosis"]
    assert rows[1] == ["ISIC_1", "0.25", "1.0"] and float(rows[2][2]) == 1 / 3
    assert [p.name for p in path.parent.iterdir()] == ["p.csv"]  # no temp file left
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        write_predictions_csv(tmp_path / "x.csv", ["a", "b"], np.zeros((2, 3)), ["m", "s"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_predictions_csv(tmp_path / "x.csv", ["a"], np.array([[1.5]]), ["m"])
    with pytest.raises(ValueError, match="duplicate"):
        write_predictions_csv(tmp_path / "x.csv", ["a", "a"], np.zeros((2, 1)), ["m"])


def _rename_id(src: Path, dst: Path) -> Path:
    """The 5.x scorer reads the 2018+ header: rename ``image_id`` to ``image``."""
    text = src.read_text().splitlines()
    dst.write_text("\n".join([text[0].replace("image_id", "image"), *text[1:]]) + "\n")
    return dst


def _official(truth: Path, pred: Path, metric: str = "auc"):
    from isic_challenge_scoring.classification import ClassificationMetric, ClassificationScore

    return ClassificationScore.from_file(truth, pred, ClassificationMetric(metric))


def _check_agreement_2017(truth_csv: Path, ds: ISIC2017Dataset, scores: np.ndarray, tmp_path):
    pred = write_predictions_csv(
        tmp_path / "predictions.csv", ds.ids, scores, ds.csv_columns, id_column=ds.csv_id_column
    )
    ours = isic2017_metrics(ds.labels, scores)
    official = _official(
        _rename_id(truth_csv, tmp_path / "t.csv"), _rename_id(pred, tmp_path / "p.csv")
    )
    for task in ds.csv_columns:
        ref = official.per_category.loc[task]
        for key in ("auc", "ap", "accuracy", "sensitivity", "specificity"):
            assert ours[task][key] == pytest.approx(float(ref[key]), abs=1e-12), (task, key)
    assert ours["mean_auc"] == pytest.approx(float(official.overall), abs=1e-12)
    return ours


def test_agrees_with_official_scorer_synthetic(tmp_path):
    from examples.isic import make_synthetic_isic2017

    root = make_synthetic_isic2017(tmp_path / "d", n_train=3, n_val=3, n_test=60, size=32, seed=1)
    ds = ISIC2017Dataset(root, "test", task="both")
    rng = np.random.default_rng(0)
    scores = np.clip(0.6 * ds.labels + 0.7 * rng.random(ds.labels.shape), 0, 1)
    scores[:5] = 0.5  # ties and the threshold edge
    _check_agreement_2017(root / "ISIC-2017_Test_v2_Part3_GroundTruth.csv", ds, scores, tmp_path)


def test_agrees_with_official_scorer_cli_on_real_2017(tmp_path):
    root = shared_subset("isic2017_256_mini")
    ds = ISIC2017Dataset(root, "test", task="both")
    # a deterministic, weakly informative score: darkness and redness of each image
    feats = np.array(
        [
            [1 - ds[i]["image"].mean().item(), ds[i]["image"][0].mean().item()]
            for i in range(len(ds))
        ]
    )
    scores = (feats - feats.min(0)) / np.ptp(feats, 0)
    ours = _check_agreement_2017(
        root / "ISIC-2017_Test_v2_Part3_GroundTruth.csv", ds, scores, tmp_path
    )
    # the `isic-challenge-scoring` command, run through the pandas-3 shim
    cli = [sys.executable, "-c", _SHIM + "from isic_challenge_scoring.__main__ import cli; cli()"]
    out = subprocess.run(
        [*cli, "-o", "json", "classification", "-m", "auc", str(tmp_path / "t.csv"), str(tmp_path / "p.csv")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    report = json.loads(out.stdout)
    for task in ds.csv_columns:
        assert ours[task]["auc"] == pytest.approx(report["per_category"]["auc"][task], abs=1e-12)
    assert ours["mean_auc"] == pytest.approx(report["overall"], abs=1e-12)


def test_multiclass_agrees_with_official_scorer_2018(tmp_path):
    root = shared_subset("isic2018_200x150_mini")
    ds = ISIC2018Dataset(root, "all")
    rng = np.random.default_rng(0)
    logits = 2.0 * np.eye(7)[ds.labels] + rng.normal(size=(len(ds), 7))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = write_predictions_csv(
        tmp_path / "p.csv", ds.ids, probs, ds.csv_columns, ds.csv_id_column
    )
    truth = shutil.copy(
        root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv",
        tmp_path / "t.csv",
    )
    official = _official(Path(truth), pred, "balanced_accuracy")
    ours = multiclass_metrics(ds.labels, probs, ds.class_names)
    assert ours["balanced_accuracy"] == pytest.approx(float(official.overall), abs=1e-12)
    for name in ds.class_names:
        ref = official.per_category.loc[name]
        assert ours["per_class"][name]["auc"] == pytest.approx(float(ref["auc"]), abs=1e-12)
        assert ours["per_class"][name]["ap"] == pytest.approx(float(ref["ap"]), abs=1e-12)
    assert ours["mean_auc"] == pytest.approx(float(official.macro_average["auc"]), abs=1e-12)
