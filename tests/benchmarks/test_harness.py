"""The benchmark harness: timings, paired comparisons, saved-tensor meters, results documents."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from benchmarks import blocks, harness
from benchmarks.harness import (
    SCHEMA,
    make_payload,
    run_metadata,
    validate_results,
    write_results,
)
from benchmarks.saved_tensors import SavedTensorMeter, saved_tensor_bytes
from benchmarks.timing import Timing, compare_alternating, time_fn
from examples.run import autocast


def test_timing_summary():
    t = Timing.from_times([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (t.median, t.min, t.max, t.n) == (3.0, 1.0, 5.0, 5)
    assert t.iqr == pytest.approx(2.0)
    assert t.times == [1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="no timings"):
        Timing.from_times([])


def test_time_fn_counts_calls():
    calls = []
    t = time_fn(lambda: calls.append(1), min_run_time=0.01, warmup=2)
    assert t.n >= 1 and t.median > 0 and len(calls) > 2
    with pytest.raises(ValueError, match="min_run_time > 0"):
        time_fn(lambda: None, min_run_time=0)


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


def test_blocks_dtypes_run_under_the_shared_autocast_table():
    x = torch.randn(2, 2)
    assert set(blocks.AMP) == set(blocks.DTYPES)
    for name, dtype in blocks.DTYPES.items():  # fp32: no autocast
        with autocast(torch.device("cpu"), blocks.AMP[name]):
            assert (x @ x).dtype == dtype


def test_finish_run_config(tmp_path, capsys):
    args = argparse.Namespace(out=tmp_path / "x.json", quick=True)
    rows = [{"name": "a", "params": {}, "metrics": {"t_s": 1.0}}]
    payload = harness.finish_run(
        "unit", rows, [{"case": "a", "t": 1.0}], args, torch.device("cpu"), extra=3
    )
    assert payload["config"] == {"out": str(tmp_path / "x.json"), "quick": True, "extra": 3}
    assert payload["results"] == rows and payload["metadata"]["device"] == "cpu"
    assert capsys.readouterr().out.split() == ["case", "t", "----", "-", "a", "1"]


def test_benchmarks_resolve_their_device_before_any_work():
    args = argparse.Namespace(threads=None, seed=0, device="cpu")
    assert harness.setup_run(args) == torch.device("cpu")
    with pytest.raises(ValueError, match="--device must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        blocks.parse_args(["--device", "tpu"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: no CUDA device"):
            harness.setup_run(argparse.Namespace(threads=None, seed=0, device="cuda"))


def test_results_schema_round_trip(tmp_path):
    meta = run_metadata("cpu")
    assert meta["torch"] == torch.__version__ and meta["num_threads"] == torch.get_num_threads()
    assert list(meta) == [
        "commit", "dirty", "created_utc", "python", "platform", "torch", "cuda", "cudnn", "device",
        "device_name", "cpu_capability", "cpu_count", "num_threads", "omp_num_threads", "argv",
        "triton",
    ]  # fmt: skip
    assert meta["commit"] is None or (len(meta["commit"]) == 40 and isinstance(meta["dirty"], bool))
    rows = [{"name": "x", "params": {"b": 1}, "metrics": {"t_s": 0.5, "peak": None}}]
    payload = make_payload("unit", rows, config={"quick": True}, metadata=meta)
    path = write_results(payload, tmp_path / "sub" / "unit.json")
    assert path.read_text() == json.dumps(payload, indent=1) + "\n"
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
