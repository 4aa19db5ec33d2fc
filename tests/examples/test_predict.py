"""examples/predict.py: predictions from a run folder and from its ONNX export match the run's own
predictions.csv, the official scorer reads them, unreadable images are listed and skipped."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from examples import predict
from examples.isic import IMAGENET_MEAN, IMAGENET_STD, make_synthetic_isic2017
from tests._support.data import ROOT, shared_subset

pytestmark = pytest.mark.filterwarnings("ignore::Warning:isic_challenge_scoring.*")

ARL_TINY = ["--image-size", "32", "--batch-size", "8", "--patches-per-image", "1", "--lr", "0.01",
            "--arch", "arl_cnn14", "--no-progress", "--cam-images", "1", "--epochs", "1"]  # fmt: skip
TOL = 1e-5


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "isic2017"
    return make_synthetic_isic2017(root, n_train=12, n_val=6, n_test=9, size=48, seed=0)


@pytest.fixture(scope="module")
def arl_run(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples import isic2017_arl

    out = tmp_path_factory.mktemp("runs") / "arl"
    isic2017_arl.main(["--data-root", str(tiny_root), "--out", str(out), *ARL_TINY])
    return out


@pytest.fixture(scope="module")
def arl_onnx(arl_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxscript", reason="the ONNX exporter needs onnxscript (test extra)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is a test extra")
    path = tmp_path_factory.mktemp("onnx") / "arl.onnx"
    predict.main(["--run", str(arl_run), "--export-onnx", str(path)])
    return path


def _read(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return (
        rows[0],
        [r[0] for r in rows[1:]],
        np.array([[float(v) for v in r[1:]] for r in rows[1:]]),
    )


def _assert_matches_run(csv_path: Path, run: Path) -> None:
    header, ids, scores = _read(csv_path)
    run_header, run_ids, run_scores = _read(run / "predictions.csv")
    assert header == run_header
    assert ids == run_ids  # every test image, in the split's order
    assert np.abs(scores - run_scores).max() <= TOL


def _official_auc(truth_csv: Path, pred_csv: Path, tmp_path: Path) -> float:
    """The official scorer's mean AUC (the 5.x scorer reads the 2018+ id column ``image``)."""
    pytest.importorskip("isic_challenge_scoring")
    import pandas as pd

    if not hasattr(pd.DataFrame, "applymap"):  # the 5.6 scorer still calls the pandas < 3 name
        pd.DataFrame.applymap = pd.DataFrame.map
    from isic_challenge_scoring.classification import ClassificationMetric, ClassificationScore

    def renamed(src: Path, name: str) -> Path:
        lines = src.read_text().splitlines()
        dst = tmp_path / name
        dst.write_text("\n".join([lines[0].replace("image_id", "image"), *lines[1:]]) + "\n")
        return dst

    score = ClassificationScore.from_file(
        renamed(truth_csv, "truth.csv"), renamed(pred_csv, "pred.csv"), ClassificationMetric("auc")
    )
    return float(score.overall)


def test_run_folder_predictions_match_the_run_and_score(tiny_root, arl_run, tmp_path):
    out = tmp_path / "test.csv"
    result = predict.main(["--run", str(arl_run), "--data-root", str(tiny_root), "--out", str(out),
                           "--no-progress", "--batch-size", "4"])  # fmt: skip
    assert result["profile"]["views"] == "arl9" and result["unreadable"] == []
    _assert_matches_run(out, arl_run)
    assert not (tmp_path / "test.unreadable.txt").exists()
    metrics = json.loads((arl_run / "metrics.json").read_text())
    truth = tiny_root / "ISIC-2017_Test_v2_Part3_GroundTruth.csv"
    assert _official_auc(truth, out, tmp_path) == pytest.approx(metrics["mean_auc"], abs=1e-6)


def test_timm_recipe_run_predicts_with_its_tested_ema_weights(tiny_root, tmp_path):
    """A --recipe timm --select last run validates and tests the EMA weights of its last epoch (not
    those of its best one): predict.py loads them too (from the tested checkpoint, or the one
    --checkpoint names)."""
    import torch

    from examples import isic2017_arl

    run = tmp_path / "arl_timm"
    args = [a if a != "0.01" else "0.05" for a in ARL_TINY]
    args[args.index("--epochs") + 1] = "3"
    isic2017_arl.main(["--data-root", str(tiny_root), "--out", str(run), "--recipe", "timm",
                       "--select", "last", *args])  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["epoch"], metrics["select"]) == (2, "last")
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    assert best["epoch"] != 2  # so that testing the best epoch would not match the predictions
    out = tmp_path / "p.csv"
    predict.main(["--run", str(run), "--data-root", str(tiny_root), "--out", str(out),
                  "--no-progress"])  # fmt: skip
    _assert_matches_run(out, run)
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    model, profile, _ = predict.load_run(run, "last")
    assert profile["source"].startswith(str(run / "checkpoints" / "last.pt"))
    loaded = model.state_dict()
    ema_gap = max((saved["ema"][k].float() - v.float()).abs().max().item()
                  for k, v in saved["model"].items() if v.is_floating_point())  # fmt: skip
    assert ema_gap > 1e-3  # after 3 epochs the average is not the last weights
    assert all(torch.equal(loaded[k], v) for k, v in saved["ema"].items())
    (run / "checkpoints" / "best.pt").unlink()
    with pytest.raises(predict.UserError, match="--checkpoint best: .* has no checkpoints/best.pt"):
        predict.load_run(run, "best")


def test_onnx_export_predictions_match_the_run(tiny_root, arl_run, arl_onnx, tmp_path):
    import onnx

    model = onnx.load(str(arl_onnx))
    assert [o.name for o in model.graph.output] == ["logits", "attention.layer4.0"]
    profile = json.loads({m.key: m.value for m in model.metadata_props}[predict.METADATA_KEY])
    assert profile["views"] == "arl9" and profile["columns"] == ["melanoma", "seborrheic_keratosis"]
    assert profile["mean"] == list(IMAGENET_MEAN) and profile["std"] == list(IMAGENET_STD)
    out = tmp_path / "onnx.csv"
    predict.main(["--onnx", str(arl_onnx), "--data-root", str(tiny_root), "--out", str(out),
                  "--no-progress", "--overlays"])  # fmt: skip
    _assert_matches_run(out, arl_run)
    _, ids, _ = _read(out)
    pngs = sorted(p.stem for p in (tmp_path / "onnx_overlays").glob("*.png"))
    assert pngs == sorted(ids)


def test_image_folder_lists_and_skips_unreadable_images(tiny_root, arl_run, tmp_path, capsys):
    src = tiny_root / "ISIC-2017_Test_v2_Data"
    images = tmp_path / "images"
    images.mkdir()
    kept = sorted(p for p in src.iterdir() if not p.name.endswith("_superpixels.png"))[:3]
    for p in kept:
        shutil.copy(p, images / p.name)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out" / "folder.csv"
    result = predict.main(["--run", str(arl_run), "--images", str(images), "--out", str(out),
                           "--no-progress", "--overlays", "--batch-size", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert "broken" in err and "unreadable" in err and "1 files that are not images" in err
    header, ids, scores = _read(out)
    assert header == ["image_id", "melanoma", "seborrheic_keratosis"]
    assert ids == [p.stem for p in kept] and result["unreadable"] == ["broken"]
    listed = (out.parent / "folder.unreadable.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith("broken\t")
    _, run_ids, run_scores = _read(arl_run / "predictions.csv")  # same files, same views
    want = run_scores[[run_ids.index(i) for i in ids]]
    assert np.abs(scores - want).max() <= TOL
    assert sorted(p.stem for p in (out.parent / "folder_overlays").glob("*.png")) == sorted(ids)


def test_isic_split_lists_and_skips_unreadable_images(tiny_root, arl_run, tmp_path, caplog):
    root = tmp_path / "isic2017"
    shutil.copytree(tiny_root, root)
    data = root / "ISIC-2017_Test_v2_Data"
    broken = sorted(p for p in data.glob("ISIC_*") if "superpixels" not in p.name)[1]
    broken.write_bytes(b"\x89PNG truncated")
    out = tmp_path / "split.csv"
    predict.main(["--run", str(arl_run), "--data-root", str(root), "--out", str(out),
                  "--no-progress"])  # fmt: skip
    assert broken.name in caplog.text  # logged with the reason when the split is read
    _, ids, scores = _read(out)
    _, run_ids, run_scores = _read(arl_run / "predictions.csv")
    assert ids == [i for i in run_ids if i != broken.stem]
    assert np.abs(scores - run_scores[[run_ids.index(i) for i in ids]]).max() <= TOL
    listed = (tmp_path / "split.unreadable.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == [broken.stem]


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "one of --run"),
        (["--run", "{run}", "--onnx", "x.onnx", "--images", "{imgs}"], "one of --run"),
        (["--run", "{run}"], "nothing to predict"),
        (["--run", "{run}", "--images", "{imgs}"], "--out CSV is required"),
        (["--run", "{run}", "--images", "{imgs}", "--out", "p.txt"], "must be a .csv"),
        (["--run", "{run}", "--images", "{imgs}", "--out", "/proc/p/p.csv"], "cannot write"),
        (["--run", "{run}", "--images", "{imgs}", "--out", "{imgs}/p.csv"], "lies inside"),
        (["--run", "{run}", "--images", "{imgs}", "--data-root", "{imgs}", "--out", "p.csv"], "not both"),
        (["--run", "{imgs}", "--images", "{imgs}", "--out", "p.csv"], "no config.json"),
        (["--run", "{run}", "--images", "{imgs}/none", "--out", "p.csv"], "not a folder"),
        (["--run", "{run}", "--images", "{imgs}", "--out", "p.csv"], "holds no image"),
        (["--run", "{run}", "--data-root", "{imgs}", "--out", "p.csv"], "not an official"),
        (["--onnx", "{imgs}/m.onnx", "--images", "{imgs}", "--out", "p.csv"], "no such file"),
        (["--run", "{run}", "--images", "{imgs}", "--out", "p.csv", "--batch-size", "0"], "batch-size"),
        (["--images", "{imgs}", "--out", "p.csv", "--export-onnx", "m.onnx", "--onnx", "m.onnx"], "needs --run"),
    ],
)  # fmt: skip
def test_user_mistakes_end_in_one_error_line(argv, message, arl_run, tmp_path, capsys, monkeypatch):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    argv = [a.format(run=arl_run, imgs=tmp_path / "imgs") for a in argv]
    with pytest.raises(SystemExit) as exc:
        predict.cli(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_onnx_without_profile_is_refused(tmp_path, capsys):
    onnx = pytest.importorskip("onnx", reason="onnx is a test extra")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])],
    )  # fmt: skip
    onnx.save(helper.make_model(graph), str(tmp_path / "plain.onnx"))
    (tmp_path / "imgs").mkdir()
    with pytest.raises(SystemExit):
        predict.cli(["--onnx", str(tmp_path / "plain.onnx"), "--images", str(tmp_path / "imgs"),
                     "--out", str(tmp_path / "p.csv")])  # fmt: skip
    assert "carries no preprocessing profile" in capsys.readouterr().err


@pytest.mark.slow
def test_command_line_exit_status(arl_run, tmp_path):
    script = ROOT / "examples" / "predict.py"
    done = subprocess.run([sys.executable, str(script), "--run", str(arl_run)],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: nothing to predict: pass --images FOLDER or --data-root ROOT"
    ]


@pytest.mark.slow
def test_attnmel_run_and_onnx_match_the_run(tiny_root, tmp_path):
    from examples import isic2017_attnmel

    run = tmp_path / "attnmel"
    isic2017_attnmel.main(["--data-root", str(tiny_root), "--out", str(run), "--epochs", "1",
                           "--image-size", "32", "--batch-size", "8", "--backbone", "resnet18",
                           "--no-progress", "--overlay-images", "1"])  # fmt: skip
    out = tmp_path / "p.csv"
    predict.main(["--run", str(run), "--data-root", str(tiny_root), "--out", str(out),
                  "--no-progress", "--overlays"])  # fmt: skip
    _assert_matches_run(out, run)
    onnx_path = tmp_path / "attnmel.onnx"
    predict.main(["--run", str(run), "--export-onnx", str(onnx_path)])
    predict.main(["--onnx", str(onnx_path), "--data-root", str(tiny_root), "--out", str(out),
                  "--no-progress", "--overlays"])  # fmt: skip
    _assert_matches_run(out, run)


@pytest.mark.slow
def test_care_run_on_real_isic2018_mini_matches_the_run(tmp_path):
    from examples import isic2018_care

    root = shared_subset("isic2018_200x150_mini")
    run = tmp_path / "care"
    isic2018_care.main(["--data-root", str(root), "--out", str(run), "--arch", "resnet10t",
                        "--image-size", "48", "--batch-size", "8", "--no-progress",
                        "--val-fraction", "0.2", "--test-fraction", "0.2", "--epochs", "2",
                        "--stage1-epochs", "1"])  # fmt: skip
    out = tmp_path / "p.csv"
    predict.main(["--run", str(run), "--data-root", str(root), "--out", str(out), "--no-progress",
                  "--overlays"])  # fmt: skip
    _assert_matches_run(out, run)
    assert len(list((tmp_path / "p_overlays").glob("*.png"))) == len(_read(out)[1])


@pytest.mark.slow
def test_arl_run_on_real_isic2017_mini_matches_the_run(tmp_path):
    from examples import isic2017_arl

    root = shared_subset("isic2017_256_mini")
    run = tmp_path / "arl"
    cache = ["--load-size", "40", "--cache-dir", str(tmp_path / "cache")]  # resized, re-encoded
    isic2017_arl.main(["--data-root", str(root), "--out", str(run), "--quick", *ARL_TINY, *cache])
    out = tmp_path / "p.csv"
    predict.main(["--run", str(run), "--data-root", str(root), "--out", str(out), "--no-progress"])
    header, ids, scores = _read(out)
    _, run_ids, run_scores = _read(run / "predictions.csv")  # the run scored a --limit subset
    assert set(run_ids) <= set(ids)
    assert np.abs(scores[[ids.index(i) for i in run_ids]] - run_scores).max() <= TOL


def test_timm_arl_run_with_its_own_normalization(tiny_root, tmp_path):
    """A run whose model normalises otherwise than ImageNet (``tf_efficientnet_lite0``: mean = std
    = 0.5, recorded as ``input_normalization`` in config.json) predicts the run's own scores, from
    the run folder (predict.py used to apply ImageNet mean/std; an ONNX export carries the
    profile's mean/std, see test_onnx_export_predictions_match_the_run)."""
    from examples import isic2017_arl

    run = tmp_path / "lite0"
    args = [a if a != "arl_cnn14" else "tf_efficientnet_lite0" for a in ARL_TINY]
    isic2017_arl.main(["--data-root", str(tiny_root), "--out", str(run), *args])
    config = json.loads((run / "config.json").read_text())
    assert config["input_normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert config["settings"]["arch"] == "tf_efficientnet_lite0"
    out = tmp_path / "p.csv"
    predict.main(["--run", str(run), "--data-root", str(tiny_root), "--out", str(out),
                  "--no-progress"])  # fmt: skip
    _assert_matches_run(out, run)
    model, profile, _ = predict.load_run(run)
    assert profile["mean"] == [0.5] * 3 and profile["std"] == [0.5] * 3
    assert len(model.alphas()) == 9


def test_onnx_export_of_input_size_padding_is_for_the_run_size(tmp_path, capsys):
    """TensorFlow 'same' padding (timm's Conv2dSame, tf_ models) is computed from the input size:
    exported with a dynamic height and width, the exporter's time grows exponentially with the
    number of such layers, so the file takes the run's input size (and any batch) instead."""
    pytest.importorskip("onnxscript", reason="the ONNX exporter needs onnxscript (test extra)")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a test extra")
    import onnx
    import timm
    import torch
    from timm.layers import Conv2dSame
    from torch import nn

    assert predict.pads_from_input_size(timm.create_model("tf_efficientnet_lite0"))
    assert not predict.pads_from_input_size(timm.create_model("efficientnet_lite0"))
    torch.manual_seed(0)
    layers = [m for k in range(3) for m in (Conv2dSame(3 if k == 0 else 4, 4, 3, 2), nn.ReLU())]
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    path = predict.export_onnx(net, {"image_size": 30, "views": "center"}, tmp_path / "same.onnx")
    assert "takes 30x30 images only" in capsys.readouterr().err
    shape = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert shape[0].dim_param and [d.dim_value for d in shape[1:]] == [3, 30, 30]
    x = torch.randn(5, 3, 30, 30)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), rtol=1e-4, atol=1e-5)
