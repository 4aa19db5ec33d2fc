"""examples/isic2017_attnmel.py end to end on tiny synthetic data and on the real ISIC samples."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from examples import isic2017_attnmel as attnmel
from examples.isic import (
    ISIC2017Dataset,
    ISIC2018Dataset,
    binary_metrics,
    make_synthetic_isic2017,
)
from tests._support.data import shared_subset
from tests._support.scores import (
    assert_multiclass_metrics_agree,
    assert_task_metrics_agree,
    read_scores_and_truth,
)

TINY = ["--image-size", "32", "--batch-size", "8", "--backbone", "resnet18", "--no-progress",
        "--overlay-images", "2", "--oversample", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "isic2017"
    return make_synthetic_isic2017(root, n_train=12, n_val=6, n_test=9, size=48, seed=1)


def test_lesion_roi_run_outputs(tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = attnmel.main(["--data-root", str(tiny_root), "--out", str(out), "--epochs", "1",
                            "--roi", "lesion", *TINY])  # fmt: skip
    for rel in ("config.json", "log.csv", "metrics.json", "predictions.csv", "checkpoints/best.pt",
                "plots/curves.png", "plots/attention.png"):  # fmt: skip
        assert (out / rel).is_file(), rel
    with open(out / "log.csv", newline="") as f:
        log = list(csv.DictReader(f))
    row = log[0]
    # loss = focal + Dice term, both logged; the Dice term is lambda-weighted and in [0, 0.011]
    assert float(row["train_loss"]) == pytest.approx(
        float(row["train_focal"]) + float(row["train_dice"]), rel=1e-5
    )
    assert 0 < float(row["train_dice"]) <= 1e-3 + 1e-2
    # validation metrics are flat numbers (sensitivity at each specificity its own column)
    assert 0 <= float(row["val_sensitivity_at_specificity_0.90"]) <= 1
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["mean_auc"] == saved["melanoma"]["auc"] == pytest.approx(metrics["mean_auc"])
    jac = saved["attention_jaccard"]
    assert jac["val"]["images"] == 6 and 0 <= jac["val"]["gate0"] <= 1 and "gate1" in jac["val"]
    with open(out / "predictions.csv", newline="") as f:
        preds = list(csv.DictReader(f))
    truth = ISIC2017Dataset(tiny_root, "test", task="melanoma")
    assert [p["image_id"] for p in preds] == truth.ids and list(preds[0]) == [
        "image_id",
        "melanoma",
    ]
    ref = binary_metrics(truth.labels, np.array([float(p["melanoma"]) for p in preds]),
                         bootstrap=2000, seed=0)  # fmt: skip
    assert saved["melanoma"]["auc"] == pytest.approx(ref["auc"], abs=1e-9)
    assert saved["melanoma"]["ap"] == pytest.approx(ref["ap"], abs=1e-9)
    # the default --bootstrap 2000 --ci-seed 0 interval, and sensitivity at specificities
    assert saved["melanoma"]["auc_ci"] == pytest.approx(ref["auc_ci"], abs=1e-9)
    assert saved["mean_auc_ci"] == saved["melanoma"]["auc_ci"]
    lo, hi = saved["mean_auc_ci"]
    assert lo - 1e-9 <= saved["melanoma"]["auc"] <= hi + 1e-9
    sas = saved["melanoma"]["sensitivity_at_specificity"]
    assert set(sas) == {"0.80", "0.90", "0.95"}
    assert sas == pytest.approx(ref["sensitivity_at_specificity"], abs=1e-9)


def test_model_and_loss_pieces() -> None:
    args = attnmel.build_parser().parse_args(["--backbone", "resnet18"])
    torch.manual_seed(0)
    net = attnmel.build_model(attnmel.ModelSettings.from_args(args, 2))
    model = attnmel.WithAttention(net).eval()
    x = torch.randn(2, 3, 64, 64)
    logits, maps = model(x)
    assert torch.equal(logits, net(x)) and [m.shape[-1] for m in maps] == [8, 4]
    args = attnmel.build_parser().parse_args([])
    assert args.backbone is None and args.lambdas == [1e-3, 1e-2] and args.focal_gamma == 2.0
    assert args.lr_step == 10 and args.lr_gamma == 0.1 and args.oversample == 4


def test_empty_split_is_an_error(tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="the 'val' split .* is empty"):
        attnmel.main(["--dataset", "isic2016", "--data-root", str(_isic2016(tmp_path)),
                      "--out", str(tmp_path / "o"), "--val-fraction", "0", *TINY])  # fmt: skip


def _isic2016(tmp_path: Path) -> Path:
    """A tiny ISIC 2016 layout (3 training, 2 test images)."""
    from PIL import Image

    root = tmp_path / "isic2016"
    for split, rows in (("Training", ["ISIC_0000000,benign", "ISIC_0000001,malignant",
                                      "ISIC_0000002,benign"]),
                        ("Test", ["ISIC_0000003,0", "ISIC_0000004,1"])):  # fmt: skip
        folder = root / f"ISBI2016_ISIC_Part3_{split}_Data"
        folder.mkdir(parents=True)
        for row in rows:
            Image.new("RGB", (40, 40), (120, 80, 60)).save(folder / f"{row.split(',')[0]}.jpg")
        (root / f"ISBI2016_ISIC_Part3_{split}_GroundTruth.csv").write_text("\n".join(rows) + "\n")
    return root


def test_bad_inputs(tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--roi lesion needs --normalization sigmoid"):
        attnmel.main(
            ["--data-root", str(tiny_root), "--roi", "lesion", "--normalization", "softmax", *TINY]
        )
    with pytest.raises(ValueError, match="isic2016 needs --data-root"):
        attnmel.main(["--dataset", "isic2016", *TINY])
    with pytest.raises(ValueError, match="not an official ISIC2016 layout.*found: ISIC-2017"):
        attnmel.main(["--dataset", "isic2016", "--data-root", str(tiny_root),
                      "--out", str(tmp_path / "o"), *TINY])  # fmt: skip
    with pytest.raises(ValueError, match="--weights .*no such file"):
        attnmel.main(["--data-root", str(tiny_root), "--out", str(tmp_path / "w"),
                      "--weights", str(tmp_path / "missing.pth"), *TINY])  # fmt: skip


@pytest.mark.usefixtures("unrendered_plots")  # checks logs and metrics, not the plots
def test_real_isic2017_sample_with_roi(tmp_path: Path) -> None:
    root = shared_subset("isic2017_256_mini")
    out = tmp_path / "r"
    metrics = attnmel.main(["--data-root", str(root), "--out", str(out), "--epochs", "1",
                            "--roi", "lesion", *TINY])  # fmt: skip
    assert 0 <= metrics["mean_auc"] <= 1
    # metrics.json is the test split's, recomputed here from predictions.csv and the official truth
    ids, columns, scores, truth = read_scores_and_truth(
        out / "predictions.csv", root / "ISIC-2017_Test_v2_Part3_GroundTruth.csv"
    )
    assert ids == ISIC2017Dataset(root, "test", task="melanoma").ids and columns == ["melanoma"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["mean_auc"] == pytest.approx(metrics["mean_auc"])
    assert_task_metrics_agree(saved, columns, scores, truth)
    assert metrics["attention_jaccard"]["val"]["images"] == 15  # every val image has a mask
    assert metrics["attention_jaccard"]["test"] == {}  # no test masks are shipped


# ~13 s: the 2018 layout is covered fast by the CARE and fault tests
@pytest.mark.slow
def test_real_isic2018_seven_classes(tmp_path: Path) -> None:
    root = shared_subset("isic2018_200x150")
    out = tmp_path / "r18"
    metrics = attnmel.main(["--dataset", "isic2018", "--data-root", str(root), "--out", str(out),
                            "--epochs", "1", "--roi", "lesion", "--limit", "35", *TINY])  # fmt: skip
    assert set(metrics["per_class"]) == {"MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"}
    assert (out / "plots" / "confusion.png").is_file() and (out / "split.json").is_file()
    assert len(metrics["confusion_matrix"]) == 7
    header = (out / "predictions.csv").read_text().splitlines()[0]
    assert header == "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"
    # metrics.json is the (limited) test split's, recomputed from predictions.csv and the truth
    ids, columns, scores, truth = read_scores_and_truth(
        out / "predictions.csv",
        root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv",
    )
    test = ISIC2018Dataset(root, "test", split_file=out / "split.json")
    assert ids == test.limit(35).ids
    assert_multiclass_metrics_agree(
        json.loads((out / "metrics.json").read_text()), columns, scores, truth
    )


def test_isic2018_val_fraction_sets_the_lesion_split(tmp_path: Path) -> None:
    """``--dataset isic2018 --val-fraction`` sizes the lesion-grouped validation split (it used
    to be ignored there: the split always took the default 0.1)."""
    from examples.isic.data.synthetic2018 import make_synthetic_isic2018
    from examples.isic.train import DistInfo

    root = make_synthetic_isic2018(tmp_path / "isic2018", n=80, size=32)
    sizes = {}
    for fraction in (0.1, 0.3):
        out = tmp_path / f"run{fraction}"
        out.mkdir()
        args = attnmel.build_parser().parse_args(
            ["--dataset", "isic2018", "--data-root", str(root), "--out", str(out),
             "--val-fraction", str(fraction), "--image-size", "32", "--no-progress"]
        )  # fmt: skip
        splits = attnmel.build_datasets(args, root, DistInfo())
        sizes[fraction] = {k: len(v) for k, v in splits.items()}
        assert sum(sizes[fraction].values()) == 80
        assert json.loads((out / "split.json").read_text())  # the split is recorded
    assert sizes[0.3]["val"] > 1.8 * sizes[0.1]["val"]
    assert abs(sizes[0.3]["val"] - 24) <= 6 and abs(sizes[0.1]["val"] - 8) <= 4
