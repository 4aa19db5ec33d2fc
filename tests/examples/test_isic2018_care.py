"""examples/isic2018_care.py end to end on the real ISIC 2018 mini set, and its pieces."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

import attnblocks as ab
from examples import isic2018_care as script
from examples.isic import ISIC2018Dataset
from tests._support.data import shared_subset
from tests._support.scores import assert_multiclass_metrics_agree, read_scores_and_truth

TINY = ["--arch", "resnet10t", "--image-size", "48", "--batch-size", "8", "--no-progress"]
TINY += ["--val-fraction", "0.2", "--test-fraction", "0.2"]


def _run(root: Path, out: Path, *extra: str) -> dict:
    argv = ["--data-root", str(root), "--out", str(out), *TINY, *extra]
    return script.main(["--epochs", "2", "--stage1-epochs", "1", *argv])


def test_end_to_end_on_real_mini(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = shared_subset("isic2018_200x150_mini")
    metrics = _run(root, tmp_path / "care")
    printed = capsys.readouterr().out
    assert "ISIC 2018 test (CARE" in printed and "bal. acc." in printed and "VASC" in printed
    out = tmp_path / "care"
    for name in ("config.json", "log.csv", "metrics.json", "predictions.csv", "split.json"):
        assert (out / name).is_file(), name
    for name in ("confusion.png", "curves.png", "attention_rare.png"):
        assert (out / "plots" / name).stat().st_size > 1000, name
    assert (out / "checkpoints" / "last.pt").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["rare_classes"] == ["DF", "VASC", "AKIEC"] and saved["care"] is True
    att = saved["rare_attention"]
    assert att["n"] > 0 and 0 <= att["inside"] <= 1 and 0 <= att["outside"] <= 1
    assert "rare-class Grad-CAM (test" in printed
    cm = torch.tensor(saved["confusion_matrix"])
    test = ISIC2018Dataset(root, "test", split_file=out / "split.json")
    assert cm.shape == (7, 7) and cm.sum() == len(test)
    assert 0 <= metrics["balanced_accuracy"] <= 1
    # metrics.json is the test split's, recomputed here from predictions.csv and the official truth
    ids, columns, scores, truth = read_scores_and_truth(
        out / "predictions.csv",
        root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv",
    )
    assert ids == test.ids
    assert columns == list(script.CLASSES)
    assert saved["balanced_accuracy"] == pytest.approx(metrics["balanced_accuracy"])
    assert_multiclass_metrics_agree(saved, columns, scores, truth)
    log = (out / "log.csv").read_text().splitlines()
    header, stage1, stage2 = (line.split(",") for line in log)
    row1, row2 = dict(zip(header, stage1, strict=True)), dict(zip(header, stage2, strict=True))
    assert row1["stage"] == "1" and float(row1["train_care"]) == 0.0
    assert row2["stage"] == "2" and float(row2["care_enabled"]) == 1.0
    assert float(row2["train_boxed"]) > 0 and float(row2["train_care"]) != 0.0
    # the checkpoint is the plain timm model: it loads without attnblocks in the way
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    import timm

    timm.create_model("resnet10t", num_classes=7).load_state_dict(state["model"])


def _log(out: Path) -> list[dict[str, str]]:
    """log.csv rows without the timing columns (which differ between runs)."""
    rows = list(csv.DictReader((out / "log.csv").open()))
    return [
        {k: v for k, v in r.items() if k not in ("train_img_s", "epoch_s", "best")} for r in rows
    ]


@pytest.mark.usefixtures("unrendered_plots")
def test_small_baseline_shares_stage1_and_resume_is_exact(tmp_path: Path) -> None:
    """The slow test below at 32 px on 8 training images, plots not rendered: --no-care trains the
    same stage 1, stage 2 from a saved stage 1 gives the uninterrupted run's log, another seed's
    stage 1 is refused."""
    root = shared_subset("isic2018_200x150_mini")
    small = ["--data-root", str(root), *TINY, "--image-size", "32", "--train-limit", "8"]
    one, two = ["--epochs", "1", "--stage1-epochs", "1"], ["--epochs", "2", "--stage1-epochs", "1"]
    script.main([*small, *two, "--out", str(tmp_path / "care")])
    script.main([*small, *two, "--out", str(tmp_path / "base"), "--no-care"])
    care, base = _log(tmp_path / "care"), _log(tmp_path / "base")
    assert care[0] == base[0]
    assert care[1]["train_care"] != base[1]["train_care"] and base[1]["train_care"] == "0.0"
    script.main([*small, *one, "--out", str(tmp_path / "s1")])
    stage1 = ["--stage1-from", str(tmp_path / "s1")]
    script.main([*small, *two, "--out", str(tmp_path / "s2"), *stage1])
    assert _log(tmp_path / "s2") == care
    with pytest.raises(ValueError, match=r"--stage1-from: .* differs on \['seed'\]"):
        script.main([*small, *two, "--seed", "7", "--out", str(tmp_path / "s3"), *stage1])


# ~30 s (four runs at 48 px on the whole mini set); the test above checks the same at 32 px
@pytest.mark.slow
def test_baseline_shares_stage1_and_resume_is_exact(tmp_path: Path) -> None:
    root = shared_subset("isic2018_200x150_mini")
    _run(root, tmp_path / "care")
    _run(root, tmp_path / "base", "--no-care")
    care, base = _log(tmp_path / "care"), _log(tmp_path / "base")
    assert care[0] == base[0]  # identical stage 1
    assert care[1]["train_care"] != base[1]["train_care"] and base[1]["train_care"] == "0.0"
    # stage 2 from the shared stage-1 state gives the uninterrupted run's numbers
    argv = ["--data-root", str(root), *TINY, "--epochs", "1", "--stage1-epochs", "1"]
    script.main([*argv, "--out", str(tmp_path / "s1")])
    argv = ["--data-root", str(root), *TINY, "--epochs", "2", "--stage1-epochs", "1"]
    script.main([*argv, "--out", str(tmp_path / "s2"), "--stage1-from", str(tmp_path / "s1")])
    assert _log(tmp_path / "s2") == care
    # a stage 1 trained with other settings is refused, naming the settings
    with pytest.raises(ValueError, match=r"--stage1-from: .* differs on \['seed'\]"):
        script.main(
            [
                *argv,
                "--seed",
                "7",
                "--out",
                str(tmp_path / "s3"),
                "--stage1-from",
                str(tmp_path / "s1"),
            ]
        )


def test_bad_input(tmp_path: Path) -> None:
    root = shared_subset("isic2018_200x150_mini")
    with pytest.raises(ValueError, match=r"--rare-classes \['FOO'\] not in the label set"):
        _run(root, tmp_path / "a", "--rare-classes", "DF,FOO")
    with pytest.raises(ValueError, match=r"target layer 'layer9' not found.*closest"):
        _run(root, tmp_path / "b", "--target-layer", "layer9")
    with pytest.raises(ValueError, match="--stage1-epochs 3 must lie in"):
        _run(root, tmp_path / "c", "--stage1-epochs", "3")
    with pytest.raises(ValueError, match="--stage1-from: no checkpoint"):
        _run(root, tmp_path / "d", "--stage1-from", str(tmp_path / "missing"))


def test_boxed_dataset_boxes_follow_the_transform() -> None:
    root = shared_subset("isic2018_200x150_mini")
    base = ISIC2018Dataset(root, "all")
    resize = v2.Compose(
        [v2.Resize((75, 100), antialias=True), v2.ToDtype(torch.float32, scale=True)]
    )
    flip = v2.Compose([resize, v2.RandomHorizontalFlip(1.0)])
    for mode in ("mask", "saliency"):
        plain = script.BoxedISIC(base, resize, mode, 0.0)
        flipped = script.BoxedISIC(base, flip, mode, 0.0)
        for i in range(0, len(base), 7):
            a, b = plain[i], flipped[i]
            assert a["box_valid"] and b["box_valid"]
            mirrored = torch.stack([100 - a["box"][2], a["box"][1], 100 - a["box"][0], a["box"][3]])
            torch.testing.assert_close(b["box"], mirrored, atol=1e-4, rtol=0)
    # mask boxes are the tight boxes of the (resized) masks
    image, mask = base.load(0)
    _, small = resize(image, mask)
    expected, _ = ab.boxes_from_masks(small[None].float())
    torch.testing.assert_close(script.BoxedISIC(base, resize, "mask", 0.0)[0]["box"], expected[0])
    # saliency boxes are computed on the un-augmented image and scaled with it
    full = script.BoxedISIC(base, v2.ToDtype(torch.float32, scale=True), "saliency", 0.0)
    torch.testing.assert_close(plain[0]["box"], full[0]["box"] / 2, atol=1e-4, rtol=0)


@pytest.mark.usefixtures("unrendered_plots")  # checks logs and metrics, not the plots
def test_saliency_boxes_end_to_end(tmp_path: Path) -> None:
    root = shared_subset("isic2018_200x150_mini")
    metrics = _run(root, tmp_path / "sal", "--boxes", "saliency", "--outer", "distance")
    row = _log(tmp_path / "sal")[1]
    assert row["stage"] == "2" and float(row["train_boxed"]) > 0
    assert float(row["train_care"]) != 0.0 and 0 <= metrics["balanced_accuracy"] <= 1


def test_care_schedule_switches_the_term_on_in_stage_2(capsys: pytest.CaptureFixture) -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(7)
    )
    care = ab.CARE(model, "0", [5], num_classes=7, enabled=True)
    schedule = script.CareSchedule(care, stage1_epochs=2, use_care=True, rare=[5], verbose=True)
    assert (schedule.stage, care.enabled) == (1, False)
    probs = torch.eye(7).repeat(2, 1).double().numpy()
    targets = torch.arange(7).repeat(2).numpy()
    assert torch.isnan(torch.tensor(schedule.metric_fn(probs, targets)["select"]))
    schedule.start(2)
    assert (schedule.stage, care.enabled) == (2, True)
    assert schedule.metric_fn(probs, targets)["select"] == 1.0  # balanced accuracy
    assert schedule.log_columns(model) == {"stage": 2, "care_enabled": 1.0}
    row = {"stage": 2, "train_loss": 0.5, "val_balanced_accuracy": 1.0}
    schedule.on_epoch_end(2, row | {"val_per_class_DF_recall": 1.0})
    assert schedule.epoch == 3 and "rare recall DF 1.000" in capsys.readouterr().out
    baseline = script.CareSchedule(care, stage1_epochs=0, use_care=False, rare=[5], verbose=False)
    assert (baseline.stage, care.enabled) == (2, False)


def test_fine_tuned_head_starts_small(tmp_path: Path) -> None:
    """With local ImageNet-style weights the 7-class head gets the fan-in initialisation, not
    timm's +-1/sqrt(7) for EfficientNets; the backbone keeps every loaded tensor."""
    import timm
    import torch

    from examples import isic2018_care as care
    from tests._support.weights import to_efficientnet_pytorch

    torch.manual_seed(0)
    source = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    path = tmp_path / "lite0.pth"
    torch.save(to_efficientnet_pytorch(source), path)
    model = care.build_model(care.ModelSettings("tf_efficientnet_lite0", weights=str(path)))
    assert model.classifier.weight.abs().max() <= 1280**-0.5
    expected = source.state_dict()
    for k, v in model.state_dict().items():
        if not k.startswith("classifier."):
            assert torch.equal(v, expected[k]), k
    scratch = care.build_model(care.ModelSettings("tf_efficientnet_lite0"))
    assert scratch.classifier.weight.abs().max() > 0.3  # from scratch: timm's own init
