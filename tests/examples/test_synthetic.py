"""Synthetic ISIC 2017 data: layout, determinism, caching, and that its labels can be learnt."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from examples.isic import (
    ISIC2017Dataset,
    arl_test_transform,
    arl_train_transform,
    binary_metrics,
    default_synthetic_root,
    isic2017_metrics,
    make_synthetic_isic2017,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _digest(root: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_layout_and_determinism(tmp_path):
    t0 = time.perf_counter()
    a = make_synthetic_isic2017(tmp_path / "a", n_train=12, n_val=6, n_test=6, size=48, seed=3)
    assert time.perf_counter() - t0 < 10
    b = make_synthetic_isic2017(tmp_path / "b", n_train=12, n_val=6, n_test=6, size=48, seed=3)
    c = make_synthetic_isic2017(tmp_path / "c", n_train=12, n_val=6, n_test=6, size=48, seed=4)
    assert _digest(a) == _digest(b) != _digest(c)
    for prefix, n in (("Training", 12), ("Validation", 6), ("Test_v2", 6)):
        data = a / f"ISIC-2017_{prefix}_Data"
        assert len(list(data.glob("ISIC_???????.jpg"))) == n
        assert len(list(data.glob("*_superpixels.png"))) == 2
        assert (
            len(list((a / f"ISIC-2017_{prefix}_Part1_GroundTruth").glob("*_segmentation.png"))) == n
        )
        lines = (a / f"ISIC-2017_{prefix}_Part3_GroundTruth.csv").read_text().splitlines()
        assert lines[0] == "image_id,melanoma,seborrheic_keratosis" and len(lines) == n + 1
        assert all(line.split(",")[1] in ("0.0", "1.0") for line in lines[1:])
    ds = ISIC2017Dataset(a, "train", task="3class")
    assert ds.class_counts() == {"nevus": 6, "melanoma": 3, "seborrheic_keratosis": 3}
    with pytest.raises(ValueError, match="not empty"):
        make_synthetic_isic2017(a)
    with pytest.raises(ValueError, match="n_val"):
        make_synthetic_isic2017(tmp_path / "d", n_val=2)


def test_default_root_is_generated_once(tmp_path, monkeypatch):
    monkeypatch.delenv("ATTNBLOCKS_CACHE_DIR", raising=False)  # it would win over the old name
    monkeypatch.setenv("ATTNBLOCKS_CACHE", str(tmp_path / "cache"))
    root = default_synthetic_root(n_train=6, n_val=3, n_test=3, size=32)
    assert root.parent == tmp_path / "cache" / "synthetic"
    stamp = (root / "ISIC-2017_Training_Part3_GroundTruth.csv").stat().st_mtime_ns
    again = default_synthetic_root(n_train=6, n_val=3, n_test=3, size=32)
    assert again == root
    assert (root / "ISIC-2017_Training_Part3_GroundTruth.csv").stat().st_mtime_ns == stamp
    assert default_synthetic_root(n_train=6, n_val=3, n_test=3, size=32, seed=1) != root
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".tmp-")]
    assert len(ISIC2017Dataset(root, "val")) == 3


def _lesion_features(ds: ISIC2017Dataset) -> np.ndarray:
    rows = []
    for i in range(len(ds)):
        item = ds[i]
        img, m = item["image"], item["mask"][0] > 0
        inside = img[:, m]
        rows.append([m.float().mean(), 1 - inside.mean(), inside.std(1).mean()])
    return np.array(rows, dtype=np.float64)


def test_labels_depend_on_appearance(tmp_path):
    """Lesion area, darkness and colour spread, read from the pixels, separate the classes."""
    root = make_synthetic_isic2017(tmp_path / "s", n_train=3, n_val=3, n_test=90, size=64, seed=5)
    ds = ISIC2017Dataset(root, "test", task="3class")
    f = _lesion_features(ds)
    mel, sk = ds.labels == 1, ds.labels == 2
    # melanoma: larger, darker, more colours; keratosis: lighter with texture
    assert binary_metrics(mel, f[:, 0] + f[:, 1] + f[:, 2])["auc"] > 0.9
    assert binary_metrics(sk, -f[:, 1])["auc"] > 0.8


class _TinyCNN(nn.Module):
    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        layers, c = [], 3
        for out in (16, 32, 64):
            layers += [
                nn.Conv2d(c, out, 3, padding=1),
                nn.BatchNorm2d(out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_tiny_cnn(root: Path, epochs: int = 6, size: int = 48, seed: int = 0) -> dict:
    """Train a tiny CNN on the ARL pipeline (patches, 9-view test) and return test metrics."""
    torch.manual_seed(seed)
    train = ISIC2017Dataset(
        root, "train", task="3class", transform=arl_train_transform(size, mean=None)
    )
    test = ISIC2017Dataset(root, "test", task="both", transform=arl_test_transform(size, mean=None))
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)
    model = _TinyCNN(3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        for batch in loader:
            loss = nn.functional.cross_entropy(model(batch["image"]), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    scores = []
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(test, batch_size=16):
            n = batch["image"].shape[0]
            probs = model(batch["image"].flatten(0, 1)).softmax(-1).view(n, 9, 3).mean(1)
            scores.append(probs[:, 1:])
    return isic2017_metrics(test.labels, torch.cat(scores).numpy())


@pytest.mark.slow
def test_tiny_cnn_learns_synthetic_labels(tmp_path):
    root = make_synthetic_isic2017(tmp_path / "s", n_train=300, n_val=3, n_test=150, size=96)
    metrics = train_tiny_cnn(root)
    assert metrics["melanoma"]["auc"] > 0.85 and metrics["seborrheic_keratosis"]["auc"] > 0.85, (
        metrics
    )
