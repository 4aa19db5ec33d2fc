"""examples/isic2017_arl.py end to end on tiny synthetic data and on the real ISIC 2017 sample."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from examples import isic2017_arl as arl
from examples.isic import ISIC2017Dataset, isic2017_metrics, make_synthetic_isic2017
from tests._support.data import shared_subset
from tests._support.scores import assert_task_metrics_agree, read_scores_and_truth

pytestmark = pytest.mark.filterwarnings("ignore::Warning:isic_challenge_scoring.*")

TINY = ["--image-size", "32", "--batch-size", "8", "--patches-per-image", "1", "--lr", "0.01",
        "--arch", "arl_cnn14", "--no-progress", "--cam-images", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "isic2017"
    return make_synthetic_isic2017(root, n_train=12, n_val=6, n_test=9, size=48, seed=0)


@pytest.fixture(scope="module")
def tiny_run(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "arl"
    metrics = arl.main(["--data-root", str(tiny_root), "--out", str(out), "--epochs", "2", *TINY])
    return out, metrics


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_outputs_and_metrics_agree_with_predictions(tiny_root: Path, tiny_run) -> None:
    out, metrics = tiny_run
    for rel in ("config.json", "log.csv", "metrics.json", "predictions.csv",
                "checkpoints/last.pt", "checkpoints/best.pt",
                "plots/curves.png", "plots/alphas.png", "plots/cam.png"):  # fmt: skip
        assert (out / rel).is_file(), rel
    assert any((out / "tb").iterdir())
    config = json.loads((out / "config.json").read_text())
    assert (
        config["settings"]["arch"] == "arl_cnn14"
        and config["settings"]["normalization"] == "spatial"
    )
    assert config["environment"]["torch"] == torch.__version__
    log = _read_csv(out / "log.csv")
    assert [r["epoch"] for r in log] == ["0", "1"]
    alpha_cols = [k for k in log[0] if k.startswith("alpha/")]
    assert alpha_cols == ["alpha/layer1.0", "alpha/layer2.0", "alpha/layer3.0", "alpha/layer4.0"]
    assert all(np.isfinite(float(log[-1][k])) for k in alpha_cols)
    assert float(log[0]["alpha/layer1.0"]) != pytest.approx(1e-3, abs=0)  # alphas are trained
    # metrics.json is what the official truth and our predictions.csv give
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved) == {"melanoma", "seborrheic_keratosis", "mean_auc", "mean_auc_ci",
                          "auc_ci_method", "epoch", "select"}  # fmt: skip
    best = [int(r["epoch"]) for r in log if r["best"] == "True"][-1]  # the epoch tested
    assert (saved["epoch"], saved["select"]) == (best, "best")
    assert saved["mean_auc"] == pytest.approx(metrics["mean_auc"])
    preds = _read_csv(out / "predictions.csv")
    truth = ISIC2017Dataset(tiny_root, "test", task="both")
    assert [p["image_id"] for p in preds] == truth.ids
    scores = np.array([[float(p["melanoma"]), float(p["seborrheic_keratosis"])] for p in preds])
    assert ((scores >= 0) & (scores <= 1)).all() and (scores.sum(1) <= 1 + 1e-9).all()
    ref = isic2017_metrics(truth.labels, scores, bootstrap=2000, seed=0)
    for task in ("melanoma", "seborrheic_keratosis"):
        for key in ("auc", "ap", "accuracy", "sensitivity", "specificity"):
            assert saved[task][key] == pytest.approx(ref[task][key], abs=1e-9), (task, key)
        # the default --bootstrap 2000 --ci-seed 0 interval, and sensitivity at specificities
        assert saved[task]["auc_ci"] == pytest.approx(ref[task]["auc_ci"], abs=1e-9)
        lo, hi = saved[task]["auc_ci"]
        assert lo - 1e-9 <= saved[task]["auc"] <= hi + 1e-9
        sas = saved[task]["sensitivity_at_specificity"]
        assert sas == pytest.approx(ref[task]["sensitivity_at_specificity"], abs=1e-9)
    assert saved["mean_auc_ci"] == pytest.approx(ref["mean_auc_ci"], abs=1e-9)
    assert saved["auc_ci_method"].startswith("stratified percentile bootstrap, 2000 resamples")


def test_prediction_csv_accepted_by_official_scorer(
    tiny_root: Path, tiny_run, tmp_path: Path
) -> None:
    pytest.importorskip("isic_challenge_scoring")
    import pandas as pd

    if not hasattr(pd.DataFrame, "applymap"):  # the 5.6 scorer still calls the pandas < 3 name
        pd.DataFrame.applymap = pd.DataFrame.map
    from isic_challenge_scoring.classification import ClassificationMetric, ClassificationScore

    out, metrics = tiny_run

    def renamed(src: Path, dst: Path) -> Path:  # the 5.x scorer reads the 2018+ id column name
        lines = src.read_text().splitlines()
        dst.write_text("\n".join([lines[0].replace("image_id", "image"), *lines[1:]]) + "\n")
        return dst

    truth = renamed(tiny_root / "ISIC-2017_Test_v2_Part3_GroundTruth.csv", tmp_path / "t.csv")
    pred = renamed(out / "predictions.csv", tmp_path / "p.csv")
    score = ClassificationScore.from_file(truth, pred, ClassificationMetric("auc"))
    assert float(score.overall) == pytest.approx(metrics["mean_auc"], abs=1e-9)
    for task in ("melanoma", "seborrheic_keratosis"):
        assert float(score.per_category.loc[task]["auc"]) == pytest.approx(metrics[task]["auc"])


def test_same_seed_same_metrics_json(tiny_root: Path, tmp_path: Path) -> None:
    """The demo's profile (``--quick``, what ``make demo`` runs on the synthetic data), twice with
    one seed: byte-identical ``metrics.json`` and ``predictions.csv``."""
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        arl.main(["--quick", "--data-root", str(tiny_root), "--out", str(out), "--epochs", "1",
                  "--seed", "3", "--bootstrap", "200", *TINY])  # fmt: skip
        runs.append(out)
    a, b = runs
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    assert (a / "predictions.csv").read_bytes() == (b / "predictions.csv").read_bytes()
    saved = json.loads((a / "metrics.json").read_text())
    assert set(saved) >= {"melanoma", "seborrheic_keratosis", "mean_auc", "mean_auc_ci"}


@pytest.mark.usefixtures("unrendered_plots")  # checks logs and metrics, not the plots
def test_resume_continues_and_refuses_other_config(tiny_root: Path, tmp_path: Path) -> None:
    base = ["--data-root", str(tiny_root), "--out", str(tmp_path / "r"), *TINY]
    arl.main([*base, "--epochs", "1"])
    with pytest.raises(ValueError, match="already holds a run"):
        arl.main([*base, "--epochs", "2"])
    with pytest.raises(
        ValueError, match=r"another configuration \(normalization: checkpoint 'spatial'"
    ):
        arl.main([*base, "--epochs", "2", "--resume", "--normalization", "channel"])
    arl.main([*base, "--epochs", "2", "--resume"])
    log = _read_csv(tmp_path / "r" / "log.csv")
    assert [r["epoch"] for r in log] == ["0", "1"]


def test_bad_inputs(tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    not_isic = tmp_path / "photos"
    not_isic.mkdir()
    (not_isic / "cat.jpg").write_bytes(b"")
    with pytest.raises(
        ValueError, match=r"not an official ISIC 2017 layout: expected .*found: cat.jpg"
    ):
        arl.main(["--data-root", str(not_isic), "--out", str(tmp_path / "o1"), *TINY])
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(ValueError, match="not a writable folder"):
        arl.main(["--data-root", str(tiny_root), "--out", str(blocker / "run"), *TINY])
    assert not (blocker.parent / "run").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        arl.main(["--data-root", str(tiny_root), "--device", "cuda", *TINY])
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        arl.main(["--data-root", str(tiny_root), "--amp", "fp16", *TINY])
    with pytest.raises(ValueError, match="arl_cnn14 trains from scratch"):
        arl.main(["--data-root", str(tiny_root), "--out", str(tmp_path / "o2"), *TINY,
                  "--weights", str(blocker)])  # fmt: skip


def test_plain_baseline_starts_from_the_same_weights() -> None:
    args = arl.build_parser().parse_args(["--arch", "arl_cnn14"])
    torch.manual_seed(0)
    with_arl = arl.build_model(arl.ModelSettings.from_args(args))
    args.no_arl = True
    torch.manual_seed(0)
    plain = arl.build_model(arl.ModelSettings.from_args(args))
    assert not hasattr(plain, "alphas") and arl.alpha_columns(plain) == {}
    sd = with_arl.state_dict()
    for k, v in plain.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert sorted(set(sd) - set(plain.state_dict())) == [f"layer{i}.0.alpha" for i in range(1, 5)]
    assert arl.alpha_columns(with_arl)["alpha/layer3.0"] == pytest.approx(1e-3)


@pytest.mark.usefixtures("unrendered_plots")  # checks logs and metrics, not the plots
def test_binary_task_and_bf16(tiny_root: Path, tmp_path: Path) -> None:
    metrics = arl.main(["--data-root", str(tiny_root), "--out", str(tmp_path / "m"), "--epochs", "1",
                        "--task", "melanoma", "--amp", "bf16", "--normalization", "sigmoid", *TINY])  # fmt: skip
    assert set(metrics) == {
        "melanoma",
        "mean_auc",
        "mean_auc_ci",
        "auc_ci_method",
        "epoch",
        "select",
    }
    assert metrics["mean_auc_ci"] == metrics["melanoma"]["auc_ci"]
    header = (tmp_path / "m" / "predictions.csv").read_text().splitlines()[0]
    assert header == "image_id,melanoma"


@pytest.mark.usefixtures("unrendered_plots")  # checks logs and metrics, not the plots
def test_real_isic2017_sample(tmp_path: Path) -> None:
    root = shared_subset("isic2017_256_mini")
    out = tmp_path / "real"
    metrics = arl.main(["--data-root", str(root), "--out", str(out), "--epochs", "1", *TINY])
    assert 0 <= metrics["mean_auc"] <= 1
    # metrics.json is the test split's, recomputed here from predictions.csv and the official truth
    ids, columns, scores, truth = read_scores_and_truth(
        out / "predictions.csv", root / "ISIC-2017_Test_v2_Part3_GroundTruth.csv"
    )
    assert ids == ISIC2017Dataset(root, "test", task="both").ids
    assert columns == ["melanoma", "seborrheic_keratosis"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["mean_auc"] == pytest.approx(metrics["mean_auc"])
    assert_task_metrics_agree(saved, columns, scores, truth)


@pytest.mark.slow
def test_script_under_torchrun_two_processes(tiny_root: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    script = Path(arl.__file__)
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script),
         "--data-root", str(tiny_root), "--out", str(out), "--epochs", "1", *TINY],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("average AUC") == 1  # rank 0 reports
    preds = _read_csv(out / "predictions.csv")
    assert [p["image_id"] for p in preds] == ISIC2017Dataset(tiny_root, "test", task="both").ids
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2


def test_any_timm_arch_from_a_tensorflow_port(tmp_path: Path) -> None:
    """``--arch efficientnet_lite0 --weights <EfficientNet-PyTorch .pth>`` builds the ``tf_``
    variant, carries every backbone tensor over, and the ARL and plain networks start equal."""
    timm = pytest.importorskip("timm")
    from tests._support.weights import to_efficientnet_pytorch

    torch.manual_seed(1)
    source = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    path = tmp_path / "lite0.pth"
    torch.save(to_efficientnet_pytorch(source), path)
    args = arl.build_parser().parse_args(["--arch", "efficientnet_lite0", "--weights", str(path)])
    assert (
        "tf_efficientnet_lite0 (--arch efficientnet_lite0 with --weights"
        in arl.resolve_timm_arch(args)
    )
    assert args.arch == "tf_efficientnet_lite0"
    args.recipe = "timm"
    assert arl.default_lr(args) == arl.TIMM_ARCH_LR["arl_cnn50"]  # fine-tuning lr
    args.recipe = "paper"
    assert arl.default_lr(args) == arl.ARCH_LR["arl_cnn50"]
    torch.manual_seed(0)
    with_arl = arl.build_model(arl.ModelSettings.from_args(args))
    args.no_arl = True
    torch.manual_seed(0)
    plain = arl.build_model(arl.ModelSettings.from_args(args))
    assert plain.pretrained_cfg["architecture"] == "tf_efficientnet_lite0"
    assert plain.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    expected = source.state_dict()
    for k, v in plain.state_dict().items():
        if not k.startswith("classifier."):
            assert torch.equal(v, expected[k]), k
    assert plain.get_classifier().out_features == 3
    # the new 3-class head: fan-in init (+-1/sqrt(1280)), not timm's +-1/sqrt(3) for EfficientNets
    assert plain.get_classifier().weight.abs().max() <= 1280**-0.5
    assert (
        timm.create_model("tf_efficientnet_lite0", num_classes=3).classifier.weight.abs().max()
        > 0.3
    )
    sd = with_arl.state_dict()
    for k, v in plain.state_dict().items():
        assert torch.equal(v, sd[k]), k
    alphas = sorted(set(sd) - set(plain.state_dict()))
    assert len(alphas) == 9 and all(k.endswith(".alpha") for k in alphas)  # Lite0's 9 skip blocks
    assert len(arl.alpha_columns(with_arl)) == 9
    x = torch.randn(2, 3, 64, 64)
    with_arl.eval(), plain.eval()
    with torch.no_grad():  # alpha = 1e-3: the ARL network starts next to the plain one
        torch.testing.assert_close(with_arl(x), plain(x), atol=0.05, rtol=0)


@pytest.mark.usefixtures("unrendered_plots")  # checks logs and metrics, not the plots
def test_timm_arch_run_logs_alphas(tiny_root: Path, tmp_path: Path) -> None:
    tiny = [a if a != "arl_cnn14" else "resnet10t" for a in TINY]
    arl.main(["--data-root", str(tiny_root), "--out", str(tmp_path / "r"), "--epochs", "1", *tiny])
    header = _read_csv(tmp_path / "r" / "log.csv")[0]
    assert [k for k in header if k.startswith("alpha/")] == [
        f"alpha/layer{i}.0" for i in range(1, 5)
    ]
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["settings"]["arch"] == "resnet10t"
    with pytest.raises(ValueError, match="--arch no_such_net: not arl_cnn50, arl_cnn14 or a timm"):
        arl.main(["--data-root", str(tiny_root), "--out", str(tmp_path / "x"),
                  *[a if a != "arl_cnn14" else "no_such_net" for a in TINY]])  # fmt: skip
