"""The benchmarks' quick profiles (they run, write the results schema and print; no timing asserts),
the saved-activation figure, and the CUDA script and its report."""

from __future__ import annotations

import copy
import json

import pytest
import timm
import torch

import attnblocks as ab
from benchmarks import blocks, memory, models
from benchmarks.harness import (
    make_payload,
    run_metadata,
    validate_results,
    write_results,
)
from benchmarks.saved_tensors import saved_tensor_bytes
from tests._support.data import ROOT

# --- the deterministic figure: saved activations ---------------------------------------------------


@pytest.fixture(scope="module")
def resnet50() -> torch.nn.Module:
    """One ResNet-50 for the module (ARLWrapper converts a model in place: tests take copies)."""
    return timm.create_model("resnet50", num_classes=2)


@pytest.mark.parametrize("norm", ab.list_normalizations())
def test_arl_resnet50_saves_what_resnet50_saves(norm, resnet50):
    x = torch.randn(1, 3, 64, 64)
    plain = copy.deepcopy(resnet50)
    plain_bytes = saved_tensor_bytes(plain, x)
    ratio = saved_tensor_bytes(ab.ARLWrapper(plain, normalization=norm), x) / plain_bytes
    assert ratio <= 1.05
    assert ratio == 1.0  # exactly: the lean merge saves only what the plain block saves


@pytest.mark.slow
def test_memory_benchmark_full_size_ratio(tmp_path):
    out = str(tmp_path / "memory.json")
    payload = memory.main(["--device", "cpu", "--pairs", "resnet50", "--out", out])
    for row in payload["results"]:
        if row["params"]["merge_backend"] in ("native", "eager"):
            assert row["metrics"]["saved_ratio"] == 1.0
        else:
            assert row["metrics"]["saved_ratio"] > 1.4


# --- quick profiles (CI): they run, write the schema, and print ----------------------------------


def test_memory_quick(tmp_path, capsys):
    out = tmp_path / "memory.json"
    backends = ["--merge-backends", "native", "eager", "reference"]
    pairs = ["--pairs", "resnet14", "vgg16"]  # ARL-ResNet-50: test_arl_resnet50_saves_...
    payload = memory.main(["--quick", "--device", "cpu", *pairs, *backends, "--out", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "memory"
    rows = {r["name"]: r["metrics"] for r in payload["results"]}
    for norm in ab.list_normalizations():
        for pair in ("resnet14",):
            # the lean merge saves exactly what the plain network saves; the reference far more
            assert rows[f"{pair}/{norm}/native"]["saved_ratio"] == 1.0
            assert rows[f"{pair}/{norm}/eager"]["saved_ratio"] == 1.0
            assert rows[f"{pair}/{norm}/reference"]["saved_ratio"] > 1.4
    assert 1.0 < rows["vgg16"]["saved_ratio"] < 1.1
    assert "saved_ratio" in capsys.readouterr().out


@pytest.mark.parametrize(
    "pairs",
    [
        ["resnet14"],
        # ~5 s more: VGG-16 and AttnMel-VGG16 are built by test_memory_quick in the default set
        pytest.param(["resnet14", "vgg16"], marks=pytest.mark.slow),
    ],
    ids=["resnet14", "resnet14-vgg16"],
)
def test_models_quick(pairs, tmp_path, capsys):
    out = tmp_path / "models.json"
    payload = models.main(
        ["--quick", "--device", "cpu", "--merge-backends", "native", "--pairs", *pairs,
         "--out", str(out)]
    )  # fmt: skip
    validate_results(json.loads(out.read_text()))
    names = {r["name"] for r in payload["results"]}
    for pair in ("resnet14",):
        for mode in ("train", "infer"):
            assert f"{pair}/{mode}/{models.PAIRS[pair].attn_name} [native]" in names
    assert ("vgg16/train/AttnMel-VGG16" in names) == ("vgg16" in pairs)
    for row in payload["results"]:
        m = row["metrics"]
        assert m["ratio_min"] <= m["ratio_median"] <= m["ratio_max"] and m["rounds"] == 2
    assert "ratio" in capsys.readouterr().out


def test_models_bad_pair():
    with pytest.raises(ValueError, match="unknown model pair 'vit'"):
        models.build_pair("vit")
    with pytest.raises(ValueError, match="unknown mode"):
        models.make_step(torch.nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1), "eval")


def test_blocks_quick(tmp_path, capsys):
    out = tmp_path / "blocks.json"
    payload = blocks.main(
        ["--quick", "--device", "cpu", "--stages", "layer1", "layer4", "--out", str(out)]
    )
    assert json.loads(out.read_text())["benchmark"] == "blocks"
    assert len(payload["results"]) == 4  # 2 stages x (fwd, fwd_bwd)
    for row in payload["results"]:
        assert row["params"]["channels"] in (32, 256)
        assert row["metrics"]["merge_arl_bytes_per_s"] > 0
        assert row["metrics"]["merge_arl_share_of_peak"] is None  # CPU: no nominal peak
    assert "copy bandwidth" in capsys.readouterr().out
    assert blocks.nominal_peak_bandwidth(torch.device("cpu")) is None


# --- the CUDA run: gpu.sh and its report --------------------------------------------------------


def _doc(benchmark: str, rows: list[dict]) -> dict:
    return make_payload(benchmark, rows, config={}, metadata=run_metadata("cpu"))


def test_gpu_report_reads_the_runs_and_sets_them_against_the_targets(tmp_path):
    from benchmarks import gpu_report

    block = {"stage": "layer1", "batch_size": 64, "channels_last": True}
    write_results(_doc("blocks", [
        {"name": "a", "params": {**block, "mode": "fwd"},
         "metrics": {"merge_arl_bytes_per_s": 4.0e12, "merge_arl_share_of_peak": 0.83}},
        {"name": "b", "params": {**block, "mode": "fwd_bwd"}, "metrics": {"ratio_median": 1.02}},
    ]), tmp_path / "blocks-cuda-bf16.json")  # fmt: skip
    pair = {"pair": "resnet50", "plain": "ResNet-50", "model": "ARL-ResNet-50 [native]",
            "batch_size": 256, "compile": True}  # fmt: skip
    ratios = {"ratio_median": 1.04, "ratio_min": 1.0, "ratio_max": 1.1}
    write_results(_doc("models", [
        {"name": "t", "params": {**pair, "mode": "train"}, "metrics": ratios},
        {"name": "i", "params": {**pair, "mode": "infer"}, "metrics": ratios},
    ]), tmp_path / "models-cuda-bf16-compile-b256.json")  # fmt: skip
    rows = {r["figure"]: r for r in gpu_report.report(tmp_path, "cuda")}
    merge_row = rows["merge fwd layer1 b64 channels_last"]
    assert (
        merge_row["value"] == "4000 GB/s = 83% of peak" and merge_row["verdict"] == "meets target"
    )
    assert rows["block fwd+bwd layer1 b64 channels_last"]["value"] == "1.020"
    name = "ARL-ResNet-50 [native] / ResNet-50 {} b256 compile"
    assert rows[name.format("train")]["verdict"] == "meets target"  # 1.04 <= 1.05
    assert rows[name.format("infer")]["verdict"] == "misses target"  # 1.04 > 1.03


def test_nominal_peak_bandwidth_falls_back_to_the_datasheet(monkeypatch):
    class Props:
        name = "NVIDIA H200"

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    assert blocks.nominal_peak_bandwidth(torch.device("cuda")) == 4.8e12


def test_models_compile_flag_wraps_the_model(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda m: seen.append(m) or m)
    model = torch.nn.Linear(4, 2)
    step = models.make_step(
        model, torch.randn(3, 4), torch.tensor([0, 1, 0]), "infer", compile=True
    )
    step()
    assert seen == [model]


@pytest.mark.slow
def test_gpu_script_runs_every_section_on_cpu_in_quick_mode(tmp_path):
    """The script a GPU machine runs once: every section (but the minutes-long CPU compile) runs,
    writes its JSON, and the report reads them back."""
    import os
    import subprocess
    import sys

    root = ROOT
    env = {**os.environ, "PYTHON": sys.executable, "QUICK": "1", "DEVICE": "cpu", "COMPILE": "0"}
    env["OUT"] = str(tmp_path)
    done = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu.sh")], capture_output=True, text=True, env=env,
        cwd=root, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert names == ["blocks-cpu-bf16.json", "memory-cpu-bf16.json", "models-cpu-bf16-b2.json",
                     "models-cpu-bf16-b4.json", "models-cpu-bf16-vgg16-b2.json"]  # fmt: skip
    assert (
        "not a CUDA device" in done.stdout and "ARL-ResNet-50 [native] / ResNet-50" in done.stdout
    )


def test_families_quick(tmp_path, capsys):
    from benchmarks import families

    out = tmp_path / "families.json"
    payload = families.main(
        ["--quick", "--device", "cpu", "--families", "torchvision-mobilenetv3", "efficientnet",
         "--out", str(out)]
    )  # fmt: skip
    validate_results(json.loads(out.read_text()))
    rows = {r["name"]: r for r in payload["results"]}
    # a last norm that is a plain BatchNorm2d is fused: no more saved than the plain block
    assert rows["torchvision-mobilenetv3"]["metrics"]["saved_ratio"] == 1.0
    # timm's BatchNormAct2d is not: the op keeps F (one map of the block's width) besides
    eff = rows["efficientnet"]["metrics"]
    c, h, w = rows["efficientnet"]["params"]["input"]
    assert eff["arl_saved_bytes"] - eff["plain_saved_bytes"] == 2 * c * h * w * 4
    assert "time_ratio" in capsys.readouterr().out
