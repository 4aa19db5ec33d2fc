"""The data-pipeline benchmark's quick profile runs and writes a valid results document."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.data_pipeline import main, write_large_isic2017
from benchmarks.harness import validate_results
from examples.isic import ISIC2017Dataset


def test_large_layout_writer(tmp_path):
    root = write_large_isic2017(tmp_path / "d", n=3, width=120, height=80)
    ds = ISIC2017Dataset(root, "train", task="3class")
    assert ds.class_counts() == {"nevus": 1, "melanoma": 1, "seborrheic_keratosis": 1}
    item = ds[0]
    assert item["image"].shape == (3, 80, 120) and 0 < float(item["mask"].mean()) < 1


def test_quick_profile(tmp_path):
    out = tmp_path / "data_pipeline.json"
    threads = torch.get_num_threads()
    try:
        payload = main(["--quick", "--images", "3", "--min-run-time", "0.05", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # the benchmark pins one thread per worker
    saved = json.loads(out.read_text())
    validate_results(saved)
    assert saved["results"] == json.loads(json.dumps(payload["results"]))
    rows = {r["name"]: r for r in saved["results"]}
    assert set(rows) == {
        "cache_build",
        "arl_train_patch",
        "arl_train_patch_with_mask",
        "attnmel_train_patch_with_mask",
    }
    assert rows["cache_build"]["params"]["images"] == 3
    for name in ("arl_train_patch", "arl_train_patch_with_mask"):
        m = rows[name]["metrics"]
        assert m["patches_per_s"] > 0 and m["cpu_s_per_patch"] == pytest.approx(
            1 / m["patches_per_s"]
        )
        assert rows[name]["params"]["threads"] == 1
    assert saved["config"]["quick"] is True
