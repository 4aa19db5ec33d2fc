"""examples/linear_probe.py: frozen features + logistic regression, the floor of the results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch

from examples import linear_probe


def _weights(tmp_path):
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000)
    path = tmp_path / "lite0.pth"
    torch.save(model.state_dict(), path)
    return path


def test_features_are_the_backbones_pooled_head_and_last_stage(tmp_path) -> None:
    model, arch = linear_probe.build_backbone("efficientnet_lite0", _weights(tmp_path))
    assert arch == "efficientnet_lite0" and model.num_classes == 0

    class Images(torch.utils.data.Dataset):
        def __init__(self):
            self.x = torch.randn(5, 3, 64, 64)

        def __len__(self):
            return 5

        def __getitem__(self, i):
            return {"image": self.x[i]}

    data = Images()
    feats = linear_probe.extract(model, data, batch_size=2, device=torch.device("cpu"))
    with torch.no_grad():
        head = model(data.x)
        stage = model.blocks(model.bn1(model.conv_stem(data.x))).mean((2, 3))
    assert feats["head"].shape == (5, 1280) and feats["stage"].shape == (5, 320)
    np.testing.assert_allclose(feats["head"], head.numpy(), atol=1e-5)
    np.testing.assert_allclose(feats["stage"], stage.numpy(), atol=1e-5)


def test_probe_scores_separable_features_perfectly() -> None:
    rng = np.random.default_rng(0)
    y = np.stack([np.arange(40) % 2, (np.arange(40) // 2) % 2], axis=1).astype(np.float32)
    feats = {
        p: np.concatenate([y * 4, rng.normal(size=(40, 3))], axis=1) for p in ("head", "stage")
    }
    out = linear_probe.probe(feats, feats, y, y, c=1.0, n_boot=50, seed=0)
    for point in ("head", "stage"):
        assert out[point]["width"] == 5
        for task in linear_probe.TASKS:
            assert out[point][task]["auc"] == 1.0 and out[point][task]["auc_ci"] == [1.0, 1.0]


def test_cli_on_the_mini_isic2017(tmp_path, one_thread) -> None:
    from tests._support.data import shared_subset

    root = shared_subset("isic2017_256_mini")
    argv = ["--data-root", str(root), "--weights", str(_weights(tmp_path)), "--out",
            str(tmp_path / "run"), "--image-size", "64", "--bootstrap", "20"]  # fmt: skip
    metrics = linear_probe.main(argv)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert (saved["n_train"], saved["n_test"]) == (30, 15)
    assert 0 <= saved["head"]["melanoma"]["auc"] <= 1 and saved["stage"]["width"] == 320
    with pytest.raises(ValueError, match="--bootstrap needs at least 2 resamples, got 1"):
        linear_probe.parse_args([*argv[:-2], "--bootstrap", "1"])
    with pytest.raises(ValueError, match="--weights .*: no such file"):
        linear_probe.main([*argv[:2], "--weights", str(tmp_path / "none.pth"), *argv[4:]])
