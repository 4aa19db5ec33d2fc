"""Plots the example scripts write into ``OUT/plots`` (matplotlib, no display needed).

- :func:`plot_curves`: training loss and validation metrics per epoch, from the engine's history.
- :func:`plot_alphas`: the ARL scale gate ``alpha`` of every block over epochs (ARL paper, Fig. 7).
- :func:`save_overlays`: images with attention / CAM heat maps on top (ARL Fig. 5, AttnMel Fig. 3).
- :func:`plot_confusion`: a confusion matrix (multi-class runs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from examples.run import atomic_path

__all__ = ["denormalize", "plot_alphas", "plot_confusion", "plot_curves", "save_overlays"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` atomically (a failed write, e.g. a full disk, leaves no partial file)."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        _plt().close(fig)
    return path


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Training loss (left) and every ``val_*auc`` column (right) against the epoch."""
    plt = _plt()
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(epochs, [r["train_loss"] for r in history], marker="o")
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    keys = [k for k in history[0] if k.startswith("val_") and k.endswith("auc")] if history else []
    for k in keys:
        ax2.plot(epochs, [r.get(k, np.nan) for r in history], marker="o", label=k[4:])
    ax2.set(xlabel="epoch", ylabel="AUC", title="validation")
    if keys:
        ax2.legend(fontsize=8)
    return _save(fig, path)


def plot_alphas(history: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """``alpha/<block>`` columns of the history against the epoch (one line per ARL block)."""
    plt = _plt()
    keys = sorted({k for r in history for k in r if k.startswith("alpha/")})
    if not keys:
        raise ValueError("plot_alphas: the history has no 'alpha/<block>' columns")
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in history]
    for k in keys:
        ax.plot(epochs, [r.get(k, np.nan) for r in history], marker=".", label=k[6:])
    ax.set(xlabel="epoch", ylabel="alpha", title="ARL scale gates (Fig. 7)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(N, 3, H, W)`` normalised tensors -> ``(N, H, W, 3)`` float arrays in [0, 1]."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (images.detach().float().cpu() * s + m).clamp(0, 1)
    return x.permute(0, 2, 3, 1).numpy()


def save_overlays(
    images: np.ndarray,
    maps: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    alpha: float = 0.5,
) -> Path:
    """A grid: one row per image, the image then each map (``(N, 1, H, W)`` in [0, 1]) over it."""
    plt = _plt()
    n, cols = len(images), 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.2 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i])
        axes[i, 0].set_title(titles[i] if titles else "image", fontsize=7)
        for j, (name, m) in enumerate(maps.items(), start=1):
            axes[i, j].imshow(images[i])
            axes[i, j].imshow(m[i, 0].cpu().numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=1)
            axes[i, j].set_title(name, fontsize=7)
        for ax in axes[i]:
            ax.axis("off")
    return _save(fig, path)


def plot_confusion(
    matrix: Sequence[Sequence[int]], names: Sequence[str], path: str | os.PathLike
) -> Path:
    """Confusion matrix (rows = truth) with counts in the cells."""
    plt = _plt()
    cm = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(names), 1 + 0.7 * len(names)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    ax.set(xlabel="predicted", ylabel="truth")
    return _save(fig, path)
