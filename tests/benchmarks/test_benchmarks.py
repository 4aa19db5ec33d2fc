"""The benchmark harness and the quick profiles of the benchmarks (no timing asserts)."""

from __future__ import annotations

import argparse
import json

import pytest
import timm
import torch

import attnblocks as ab
from benchmarks import blocks, harness, memory, models
from benchmarks.harness import (
    SCHEMA,
    SavedTensorMeter,
    Timing,
    compare_alternating,
    make_payload,
    resolve_device,
    run_metadata,
    saved_tensor_bytes,
    validate_results,
    write_results,
)

# --- harness ---------------------------------------------------------------------------------------


def test_timing_summary():
    t = Timing.from_times([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (t.median, t.min, t.max, t.n) == (3.0, 1.0, 5.0, 5)
    assert t.iqr == pytest.approx(2.0)
    assert t.times == [1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="no timings"):
        Timing.from_times([])


def test_time_fn_counts_calls():
    calls = []
    t = harness.time_fn(lambda: calls.append(1), min_run_time=0.01, warmup=2)
    assert t.n >= 1 and t.median > 0 and len(calls) > 2
    with pytest.raises(ValueError, match="min_run_time > 0"):
        harness.time_fn(lambda: None, min_run_time=0)


def test_compare_alternating_order_and_paired_ratios():
    order: list[str] = []

    def make(name):
        def fn():
            order.append(name)
            sum(range(2000 if name == "b" else 1000))

        return fn

    cmp = compare_alternating(
        {"a": make("a"), "b": make("b")}, rounds=4, min_run_time=0.002, warmup=1
    )
    assert [list(r) for r in cmp.rounds] == [["a", "b"], ["b", "a"], ["a", "b"], ["b", "a"]]
    # the first calls are the warm-up of each variant, in order
    assert order[:2] == ["a", "b"]
    ratios = sorted(r["b"] / r["a"] for r in cmp.rounds)
    assert cmp.ratios["b"].times == pytest.approx(ratios)
    assert cmp.timings["a"].n == 4 and "a" not in cmp.ratios
    assert json.loads(json.dumps(cmp.as_dict()))["baseline"] == "a"
    with pytest.raises(ValueError, match="baseline 'c'"):
        compare_alternating({"a": make("a")}, baseline="c")


def test_saved_tensor_meter_deduplicates_by_storage():
    x = torch.randn(4, 8, requires_grad=True)
    with SavedTensorMeter() as meter:
        torch.relu(x * 2).sum()  # mul by a Python scalar saves nothing; relu saves its output
    assert meter.bytes == 4 * 8 * 4 and meter.count == 1
    with SavedTensorMeter() as meter:
        y = x.exp()  # saves its output y
        (y * y).sum()  # saves y twice: still one storage
        y[:2].sin()  # sin saves its input, a view of y: still one storage
    assert meter.bytes == 128 and meter.count == 1 and meter.calls >= 4
    with SavedTensorMeter(exclude=[x]) as meter:
        (x * x).sum()
    assert meter.bytes == 0


def test_saved_tensor_bytes_of_a_linear_layer_excludes_parameters():
    lin = torch.nn.Linear(16, 4)
    x = torch.randn(3, 16, requires_grad=True)  # then addmm saves both x and the weight
    assert saved_tensor_bytes(lin, x) == 3 * 16 * 4  # the input; the weight is excluded
    assert saved_tensor_bytes(lin, x, exclude_params=False) == 3 * 16 * 4 + 16 * 4 * 4


def test_autocast():
    x = torch.randn(2, 2)
    for amp in ("none", "fp32"):
        with harness.autocast(torch.device("cpu"), amp):
            assert (x @ x).dtype == torch.float32
    with harness.autocast(torch.device("cpu"), "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown autocast dtype 'fp8'"):
        harness.autocast(torch.device("cpu"), "fp8")


def test_finish_run_config(tmp_path, capsys):
    args = argparse.Namespace(out=tmp_path / "x.json", quick=True)
    rows = [{"name": "a", "params": {}, "metrics": {"t_s": 1.0}}]
    payload = harness.finish_run(
        "unit", rows, [{"case": "a", "t": 1.0}], args, torch.device("cpu"), extra=3
    )
    assert payload["config"] == {"out": str(tmp_path / "x.json"), "quick": True, "extra": 3}
    assert payload["results"] == rows and payload["metadata"]["device"] == "cpu"
    assert capsys.readouterr().out.split() == ["case", "t", "----", "-", "a", "1"]


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_results_schema_round_trip(tmp_path):
    meta = run_metadata("cpu")
    assert meta["torch"] == torch.__version__ and meta["num_threads"] == torch.get_num_threads()
    rows = [{"name": "x", "params": {"b": 1}, "metrics": {"t_s": 0.5, "peak": None}}]
    payload = make_payload("unit", rows, config={"quick": True}, metadata=meta)
    path = write_results(payload, tmp_path / "sub" / "unit.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(payload))
    assert [p.name for p in path.parent.iterdir()] == ["unit.json"]  # no temp file left
    bad_rows = [
        [{"name": "x", "params": {}}],
        [{"name": "x", "params": {}, "metrics": {"t": "fast"}}],
    ]
    for bad in bad_rows:
        with pytest.raises(ValueError, match="results row 0"):
            make_payload("unit", bad, config={}, metadata=meta)
    with pytest.raises(ValueError, match="schema"):
        validate_results({**payload, "schema": "other/v0"})
    with pytest.raises(ValueError, match="metadata lacks 'commit'"):
        validate_results({**payload, "metadata": {}})
    assert payload["schema"] == SCHEMA


# --- the deterministic figure: saved activations ---------------------------------------------------


@pytest.mark.parametrize("norm", ab.list_normalizations())
def test_arl_resnet50_saves_what_resnet50_saves(norm):
    x = torch.randn(1, 3, 64, 64)
    plain = timm.create_model("resnet50", num_classes=2)
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


def test_models_quick(tmp_path, capsys):
    out = tmp_path / "models.json"
    payload = models.main(
        ["--quick", "--device", "cpu", "--merge-backends", "native", "--pairs", "resnet14", "vgg16",
         "--out", str(out)]
    )  # fmt: skip
    validate_results(json.loads(out.read_text()))
    names = {r["name"] for r in payload["results"]}
    for pair in ("resnet14",):
        for mode in ("train", "infer"):
            assert f"{pair}/{mode}/{models.PAIRS[pair].attn_name} [native]" in names
    assert "vgg16/train/AttnMel-VGG16" in names
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
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
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
