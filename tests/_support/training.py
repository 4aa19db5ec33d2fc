"""A tiny, fast training set-up for the example engine's tests: two Gaussian blobs as 8x8 images, a
four-channel CNN, cross-entropy, accuracy, and a seeded :class:`Trainer` with SGD and a step
schedule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from examples.isic.train import Trainer


class Blobs(Dataset):
    """Two Gaussian blobs as 3x8x8 'images' (class 1 brighter), with a random flip augmentation."""

    def __init__(self, n: int = 48, seed: int = 0, views: int = 0, flip: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 2
        self.images = torch.randn(n, 3, 8, 8, generator=g) + self.labels[:, None, None, None]
        self.views, self.flip = views, flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        x = self.images[i]
        if (
            self.flip and torch.rand(()) < 0.5
        ):  # global RNG: replayed by the engine's per-epoch seeding
            x = x.flip(-1)
        if self.views:
            x = torch.stack([x * (1 + 0.1 * v) for v in range(self.views)])
        return {"image": x, "label": self.labels[i], "id": f"img{i:03d}"}


def tiny_model(p_drop: float = 0.2) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(p_drop),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    )  # fmt: skip


def ce_loss(batch: dict, output: torch.Tensor, model: nn.Module):
    loss = nn.functional.cross_entropy(output.float(), batch["label"])
    return loss, {"ce": loss.detach()}


def accuracy(probs: np.ndarray, targets: np.ndarray) -> dict:
    return {"acc": float((probs.argmax(1) == targets).mean())}


def make_trainer(
    out: Path, *, seed: int = 0, loss_fn=ce_loss, p_drop: float = 0.2, **kw
) -> Trainer:
    torch.manual_seed(seed)
    model = tiny_model(p_drop)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    kw.setdefault("run_config", {"arch": "tiny", "lr": 0.1})
    return Trainer(
        model, loss_fn, opt, out, torch.device("cpu"), scheduler=sched, metric_fn=accuracy,
        monitor="acc", seed=seed, progress=False, **kw,
    )  # fmt: skip


def loaders(seed: int = 0):
    train = DataLoader(Blobs(48, seed), batch_size=8, shuffle=True)
    val = DataLoader(Blobs(16, seed + 1), batch_size=8)
    return train, val
