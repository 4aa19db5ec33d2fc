"""AttnMel-CNN on ISIC 2017 / 2016 / 2018 (Yan, Kawahara, Hamarneh, "Melanoma Recognition via Visual
Attention", IPMI 2019), with optional lesion-mask regularization of the attention maps.

Paper protocol as defaults: VGG-16-BN with grid attention gates on pool-3 and pool-4 guided by
pool-5 (``--backbone`` takes any timm model), focal loss (gamma 2), melanoma oversampled x4, SGD
(momentum 0.9, Nesterov, weight decay 1e-4) with lr 0.01 divided by 10 every 10 epochs, 50 epochs,
batch 32, 224 px crops, best epoch by validation AUC. ``--roi lesion`` adds
``lambda_3 (1 - Dice(A3, M3)) + lambda_4 (1 - Dice(A4, M4))`` with the Part 1 lesion masks
(lambdas 0.001 / 0.01; images without a mask are left out of the Dice term). ``--recipe timm``
trains with timm's AdamW, cosine schedule, EMA and label smoothing instead
(``examples/isic/train/recipes.py``; not the paper's protocol).

    python examples/isic2017_attnmel.py                                    # synthetic demo
    python examples/isic2017_attnmel.py --data-root ISIC2017 --weights vgg16_bn.pth --roi lesion
    python examples/isic2017_attnmel.py --data-root ISIC2017 --backbone efficientnet_lite0 \\
        --weights efficientnet-lite0.pth
    python examples/isic2017_attnmel.py --dataset isic2018 --data-root ISIC2018  # 7 classes

Writes into ``--out``: config.json, log.csv, tb/, checkpoints/{last,best}.pt, metrics.json (AUC and
AP, Tables 1-2; per-class AUC and their mean for 2018; attention Jaccard with the lesion masks,
Table 3), predictions.csv (official format) and plots/{curves,attention}.png (Fig. 3).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python examples/isic2017_attnmel.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

import attnblocks as ab
from examples.isic import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ISIC2016Dataset,
    ISIC2017Dataset,
    ISIC2018Dataset,
    OversamplingSampler,
    attnmel_eval_transform,
    attnmel_train_transform,
    cli,
    data_root,
    default_synthetic_root,
    weights,
)
from examples.isic.data.cache import default_cache_dir
from examples.isic.eval import (
    attention_jaccard,
    binary_metrics,
    ci_method,
    multiclass_metrics,
    plots,
    report,
    write_predictions_csv,
)
from examples.isic.train import DistInfo, Trainer, recipes, shard_loader
from examples.run import write_json

SCRIPT = "isic2017_attnmel"
PAPER = {"epochs": 50, "batch_size": 32, "image_size": 224, "lr": 0.01, "limit": None,
         "backbone": "vgg16_bn", "weight_decay": 1e-4}  # fmt: skip
QUICK = {"epochs": 2, "batch_size": 16, "image_size": 64, "lr": 0.01, "limit": 60,
         "backbone": "resnet18"}  # fmt: skip
SYNTHETIC = {"n_train": 150, "n_val": 60, "n_test": 90, "size": 96}
NUM_CLASSES = {"isic2017": 2, "isic2016": 2, "isic2018": 7}  # the model's outputs per dataset

# dataset name -> (dataset class, splits (train, val, test), task, melanoma class index, layout)
DATASETS: dict[str, tuple[type, tuple[str, str, str], str, int, tuple[str, ...]]] = {
    "isic2017": (ISIC2017Dataset, ("train", "val", "test"), "melanoma", 1, data_root.ISIC2017_LAYOUT),
    "isic2016": (ISIC2016Dataset, ("train", "train", "test"), "malignant", 1, (
        "ISBI2016_ISIC_Part3_Training_Data/", "ISBI2016_ISIC_Part3_Training_GroundTruth.csv",
        "ISBI2016_ISIC_Part3_Test_Data/", "ISBI2016_ISIC_Part3_Test_GroundTruth.csv")),
    "isic2018": (ISIC2018Dataset, ("train", "val", "test"), "7class", 0, (
        "ISIC2018_Task3_Training_Input/", "ISIC2018_Task3_Training_GroundTruth/")),
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=SCRIPT, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    cli.add_common_args(p, PAPER)
    g = p.add_argument_group("AttnMel")
    g.add_argument("--dataset", choices=sorted(DATASETS), default="isic2017")
    g.add_argument(
        "--backbone",
        default=None,
        help="vgg16_bn = AttnMel-CNN (default), or any timm model; quick: resnet18",
    )
    g.add_argument(
        "--gate-stages",
        type=int,
        nargs="+",
        default=None,
        help="stages that get a gate (default 2 3: pool-3/pool-4 on VGG)",
    )
    g.add_argument(
        "--head",
        choices=ab.list_gated_heads(),
        default="attention",
        help="attention (AttnMel), gap_concat (Mel-CNN), gap (VGG-16-GAP)",
    )
    g.add_argument(
        "--normalization",
        choices=ab.list_gate_normalizations(),
        default="sigmoid",
        help="attention map normalization (the Dice term needs sigmoid)",
    )
    g.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="local backbone checkpoint; an EfficientNet-PyTorch one (converted from TensorFlow) "
        "builds timm's tf_ variant of --backbone (efficientnet_lite0 -> tf_efficientnet_lite0)",
    )
    g.add_argument("--pretrained", action="store_true", help="timm's weights (network access)")
    g.add_argument(
        "--roi",
        choices=["none", "lesion"],
        default="none",
        help="lesion: Dice regularization of the maps with the lesion masks",
    )
    g.add_argument(
        "--lambdas",
        type=float,
        nargs="+",
        default=[1e-3, 1e-2],
        help="Dice weights per gate (paper: 0.001 0.01)",
    )
    g.add_argument("--focal-gamma", type=float, default=2.0, help="focal loss gamma (0: CE)")
    g.add_argument("--oversample", type=int, default=4, help="repeat melanoma images N times")
    g.add_argument("--momentum", type=float, default=0.9, help="paper recipe: SGD momentum")
    g.add_argument(
        "--weight-decay", type=float, default=None, help="default 1e-4 (paper), 0.05 (timm recipe)"
    )
    g.add_argument(
        "--lr-step", type=int, default=10, help="paper recipe: divide the lr by 10 every N epochs"
    )
    g.add_argument("--lr-gamma", type=float, default=0.1)
    g.add_argument("--patience", type=int, default=None, help="early stop (paper: none)")
    g.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="isic2016 has no validation split: hold out this fraction of train; isic2018: "
        "the fraction of lesions in the lesion-grouped validation split",
    )
    g.add_argument("--limit", type=int, default=None, help="at most N images per split")
    g.add_argument(
        "--load-size",
        type=int,
        default=None,
        help="decode images once to this shorter side into --cache-dir",
    )
    g.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="resized-image cache (default ~/.cache/attnblocks/isic-resized)",
    )
    g.add_argument("--overlay-images", type=int, default=4, help="images in plots/attention.png")
    recipes.add_recipe_args(p)
    return p


class WithAttention(nn.Module):
    """``forward(x) -> (logits, maps)``, so that DDP and compile see the maps of the gates."""

    def __init__(self, net: ab.AttentionGatedNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return self.net.forward_with_attention(x)


def build_datasets(
    args: argparse.Namespace,
    root: Path,
    dist_info: DistInfo,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> dict[str, Any]:
    """The train/val/test datasets, their transforms normalising with ``mean``/``std`` (the
    model's ``pretrained_cfg``)."""
    cls, splits, task, _, _ = DATASETS[args.dataset]
    load: dict[str, Any] = {
        "load_size": args.load_size, "progress": dist_info.is_main and args.progress,
        "skip_bad": args.skip_bad, "cache_workers": args.workers, "verify": True,
    }  # fmt: skip
    if args.load_size is not None:
        load["cache_dir"] = args.cache_dir or default_cache_dir() / "isic-resized"
    if args.dataset == "isic2018":
        load["split_file"] = Path(args.out) / "split.json"
        load["val_fraction"] = args.val_fraction  # the lesion-grouped validation split
        load["split_mismatch"] = "error" if args.resume else "replace"
    train_tf = attnmel_train_transform(args.image_size, mean=mean, std=std)
    eval_tf = attnmel_eval_transform(args.image_size, mean=mean, std=std)
    out = {}
    for name, split in zip(("train", "val", "test"), splits, strict=True):
        out[name] = cls(root, split, task, train_tf if name == "train" else eval_tf, **load)
    if dist_info.is_main:
        data_root.write_skipped(args.out, {k: v for k, v in out.items() if k != "val" or
                                     args.dataset != "isic2016"})  # fmt: skip
    if args.dataset == "isic2016":  # no official validation split
        out["val"] = out["val"].holdout(args.val_fraction, args.seed, "held_out")
        out["train"] = out["train"].holdout(args.val_fraction, args.seed, "rest")
    if args.limit is not None:
        out = {k: v.limit(args.limit) for k, v in out.items()}
    data_root.check_not_empty(out, root)
    return out


@dataclass(frozen=True)
class ModelSettings:
    """What :func:`build_model` builds: ``backbone`` with gates on ``gate_stages`` and ``head``."""

    backbone: str
    num_classes: int
    gate_stages: tuple[int, ...] | None = None  # None: 2 3 (pool-3 and pool-4 on VGG)
    head: str = "attention"
    normalization: str = "sigmoid"
    weights: Path | None = None
    pretrained: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace, num_classes: int) -> ModelSettings:
        stages = None if args.gate_stages is None else tuple(args.gate_stages)
        return cls(
            backbone=args.backbone, num_classes=num_classes, gate_stages=stages, head=args.head,
            normalization=args.normalization, weights=args.weights, pretrained=args.pretrained,
        )  # fmt: skip


def build_model(settings: ModelSettings) -> ab.AttentionGatedNet:
    """AttnMel-CNN (:func:`attnblocks.attnmel_vgg16`) or gates on any timm backbone."""
    s = settings
    if s.weights is not None and not Path(s.weights).is_file():
        raise ValueError(f"--weights {s.weights}: no such file")
    kw = {"head": s.head, "normalization": s.normalization, "pretrained": s.pretrained,
          "weights": s.weights}  # fmt: skip
    if s.backbone == "vgg16_bn" and s.gate_stages in (None, (2, 3)):
        return ab.attnmel_vgg16(s.num_classes, **kw)
    return ab.AttentionGatedNet(s.backbone, s.gate_stages or (2, 3), s.num_classes, **kw)


def metric_fn_for(dataset: Any, multiclass: bool):
    names = dataset.class_names

    def metric_fn(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        if multiclass:
            return report.flatten_metrics(multiclass_metrics(targets, probs, names))
        m = report.flatten_metrics(binary_metrics(targets, probs[:, 1]))
        return {**m, "mean_auc": m["auc"]}

    return metric_fn


@torch.no_grad()
def attention_outputs(net: ab.AttentionGatedNet, dataset: Any, device: torch.device, n: int):
    """Images, masks, ids, and the gates' maps of the first ``n`` items of ``dataset``."""
    net.eval()
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    x = torch.stack([it["image"] for it in items]).to(device)
    _, maps = net.forward_with_attention(x)
    masks = torch.stack([it["mask"] for it in items])
    has = torch.stack([it["has_mask"] for it in items])
    return x, masks, has, [it["id"] for it in items], maps


def jaccard_on(net: ab.AttentionGatedNet, dataset: Any, device: torch.device, batch: int) -> dict:
    """Mean attention Jaccard per gate over the images of ``dataset`` that have a lesion mask."""
    sums, count = None, 0
    for start in range(0, len(dataset), batch):
        idx = range(start, min(start + batch, len(dataset)))
        _, masks, has, _, maps = attention_outputs(net, dataset.subset(idx), device, batch)
        if not has.any():
            continue
        j = [attention_jaccard(m.cpu(), masks, valid=has, reduction="none") for m in maps]
        vals = [float(torch.nan_to_num(v[has]).sum()) for v in j]
        sums = vals if sums is None else [a + b for a, b in zip(sums, vals, strict=True)]
        count += int(has.sum())
    if not count or sums is None:
        return {}
    return {f"gate{k}": s / count for k, s in enumerate(sums)} | {"images": count}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The flags, their profile (paper, ``--quick``/synthetic, ``--recipe timm``) and checks."""
    args = build_parser().parse_args(argv)
    synthetic = args.data_root is None
    if synthetic and args.dataset != "isic2017":
        raise ValueError(
            f"--dataset {args.dataset} needs --data-root (the synthetic default is ISIC 2017)"
        )
    paper, quick = recipes.resolve_recipe(args, PAPER, QUICK)
    cli.resolve_profile(args, paper, quick, use_quick=args.quick or synthetic)
    cli.check_common_args(args)
    cli.check_numbers(
        args,
        positive=("oversample", "lr_step", "lr_gamma", "patience", "limit", "load_size"),
        non_negative=("focal_gamma", "lambdas", "momentum", "weight_decay", "overlay_images",
                      "gate_stages"),
        fraction=("val_fraction",),
    )  # fmt: skip
    if args.roi == "lesion" and args.normalization != "sigmoid":
        raise ValueError(
            "--roi lesion needs --normalization sigmoid (a softmax map scores Dice ~0)"
        )
    return args


def build_training(
    net: ab.AttentionGatedNet, args: argparse.Namespace, steps_per_epoch: int
) -> tuple[nn.Module, torch.optim.Optimizer, Any, Any]:
    """The training model (logits and maps), optimizer, scheduler and loss of ``--recipe`` and
    ``--roi``."""
    if args.roi == "lesion" and len(net.gates) != len(args.lambdas):
        raise ValueError(
            f"--lambdas needs one weight per gate ({len(net.gates)}), got {args.lambdas}"
        )
    model = WithAttention(net)
    if args.recipe == "timm":  # AdamW, per-step cosine with warm-up, EMA, label smoothing
        optimizer, scheduler = recipes.build_timm_training(
            net, recipes.TimmRecipe.from_args(args), steps_per_epoch
        )
        cls_loss, cls_name = recipes.timm_loss(args.smoothing), "ce"
    else:  # the paper's: SGD (Nesterov), lr / 10 every --lr-step epochs, focal loss
        optimizer = torch.optim.SGD(
            model.parameters(), lr=args.lr, momentum=args.momentum, nesterov=args.momentum > 0,
            weight_decay=args.weight_decay,
        )  # fmt: skip
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, args.lr_step, args.lr_gamma)
        cls_loss, cls_name = ab.FocalLoss(gamma=args.focal_gamma), "focal"
    dice = ab.DiceAttentionRegularizer(weights=args.lambdas) if args.roi == "lesion" else None

    def loss_fn(batch: dict, output: tuple[Tensor, list[Tensor]], _model: nn.Module):
        logits, maps = output
        loss = cls_loss(logits.float(), batch["label"])
        if dice is None:
            return loss
        reg = dice([m.float() for m in maps], batch["mask"], valid=batch["has_mask"])
        return loss + reg, {cls_name: loss.detach(), "dice": reg.detach()}

    return model, optimizer, scheduler, loss_fn


def score_test_set(
    preds, dataset: Any, task: str, args: argparse.Namespace
) -> tuple[dict, Any, list]:
    """``metrics.json``'s metrics, and the scores and columns of ``predictions.csv``."""
    ci = {"bootstrap": args.bootstrap, "seed": args.ci_seed}
    if args.dataset == "isic2018":
        metrics = multiclass_metrics(preds.targets, preds.probs, dataset.class_names, **ci)
        return metrics, preds.probs, list(dataset.csv_columns)
    metrics = {task: binary_metrics(preds.targets, preds.probs[:, 1], **ci)}
    metrics["mean_auc"] = metrics[task]["auc"]
    if args.bootstrap:
        metrics["mean_auc_ci"] = metrics[task]["auc_ci"]
        metrics["auc_ci_method"] = ci_method(args.bootstrap, args.ci_seed)
    return metrics, preds.probs[:, 1:], [dataset.csv_columns[0]]


@dataclass(frozen=True)
class FigureSettings:
    """What :func:`attention_figure` draws: ``images`` test images, the gates named ``gate_names``
    (index -> name; others are "gate k")."""

    images: int
    gate_names: Mapping[int, str]
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD


def attention_figure(
    net: ab.AttentionGatedNet, test: Any, device: torch.device, path: Path, settings: FigureSettings
) -> Path:
    """The gates' maps (and the lesion masks, when the test images have them) over test images."""
    x, masks, has, ids, maps = attention_outputs(net, test, device, settings.images)
    names = settings.gate_names
    over = {f"{names.get(k, f'gate {k}')} attention": ab.overlay_maps(m, x.shape[-2:])
            for k, m in enumerate(maps)}  # fmt: skip
    if has.any():  # the shared ISIC 2017 test set comes without masks
        over["lesion mask"] = masks.float()
    return plots.save_overlays(plots.denormalize(x, settings.mean, settings.std), over, path, ids)


@cli.script_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    # flags and the run folder
    args = parse_args(argv)
    synthetic = args.data_root is None
    device, dist_info = cli.setup_device(args.device, args.amp)
    _, _, task, mel_index, expected = DATASETS[args.dataset]
    root = default_synthetic_root(**SYNTHETIC) if synthetic else args.data_root
    data_root.check_layout(root, expected, args.dataset.upper())
    args.out = args.out or cli.default_out_dir(SCRIPT)
    out = cli.prepare_out_dir(args.out, args.resume, root) if dist_info.is_main else Path(args.out)
    dist_info.barrier()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # the model first: the data is normalised as its weights' pretrained_cfg says
    multiclass = args.dataset == "isic2018"
    torch.manual_seed(args.seed)
    with weights.reading_weights(args.weights):
        args.backbone, arch_line = weights.resolve_architecture(args.backbone, args.weights)
        net = build_model(ModelSettings.from_args(args, NUM_CLASSES[args.dataset]))
    mean, std = weights.input_normalization(net)
    if dist_info.is_main:
        logging.info("%s; input %s (its pretrained_cfg)", arch_line,
                     weights.describe_normalization(mean, std))  # fmt: skip
    if net.load_report is not None and dist_info.is_main:
        logging.info("backbone weights %s: %s", args.weights, net.load_report)

    # data
    splits = build_datasets(args, root, dist_info, mean, std)
    train, val, test = splits["train"], splits["val"], splits["test"]
    sampler = OversamplingSampler(
        train.labels, repeats={mel_index: args.oversample}, seed=args.seed
    )
    dl = {"batch_size": args.batch_size, "num_workers": args.workers}
    train_loader = DataLoader(
        train, sampler=sampler, drop_last=len(sampler) > args.batch_size, **dl
    )
    val_loader = shard_loader(val, dist_info, **dl)
    test_loader = shard_loader(test, dist_info, **dl)

    # training
    model, optimizer, scheduler, loss_fn = build_training(net, args, len(train_loader))
    trainer = Trainer(
        model, loss_fn, optimizer, out, device, scheduler=scheduler,
        metric_fn=metric_fn_for(train, multiclass), monitor="mean_auc", amp=args.amp,
        channels_last=args.channels_last, compile=args.compile, seed=args.seed,
        patience=args.patience, run_config=cli.resume_settings(args),
        resume_defaults=cli.ADDED_DEFAULTS, dist_info=dist_info,
        progress=args.progress, ema_decay=args.ema_decay or None,
    )  # fmt: skip
    if dist_info.is_main:
        cli.save_config(out, args, device, data_root=str(root), synthetic=synthetic,
                        datasets={k: v.summary() for k, v in splits.items()},
                        world_size=dist_info.world_size,
                        input_normalization={"mean": mean, "std": std})  # fmt: skip
        print(f"{SCRIPT}: {args.backbone} ({args.head}, roi {args.roi}) on {args.dataset}, "
              f"{len(train)} train / {len(val)} val / {len(test)} test images"
              f"{' (synthetic default)' if synthetic else ''}, {args.epochs} epochs, out {out}")  # fmt: skip
    history = trainer.fit(train_loader, val_loader, args.epochs, resume=args.resume)

    # evaluation on the test set with the weights of the best epoch (or the last: --select)
    chosen = trainer.load_tested(args.select)
    preds = trainer.predict(test_loader, desc="test")
    metrics, scores, columns = score_test_set(preds, train, task, args)
    metrics |= {"epoch": chosen, "select": args.select}

    # outputs
    if dist_info.is_main:
        if net.gates:
            metrics["attention_jaccard"] = {
                split: jaccard_on(net, ds, device, args.batch_size)
                for split, ds in (("val", val), ("test", test))
            }
        write_json(out / "metrics.json", metrics)
        write_predictions_csv(
            out / "predictions.csv", preds.ids, scores, columns, test.csv_id_column
        )
        figures = out / "plots"
        plots.plot_curves(history, figures / "curves.png")
        if multiclass:
            plots.plot_confusion(
                metrics["confusion_matrix"], train.class_names, figures / "confusion.png"
            )
        if net.gates:
            vgg = args.backbone == "vgg16_bn"
            names = {0: "pool-3", 1: "pool-4"} if vgg else {}
            figure = FigureSettings(args.overlay_images, names, mean, std)
            attention_figure(net, test, device, figures / "attention.png", figure)
        title = f"test set ({len(test)} images), {report.epoch_title(chosen, args.select)}"
        if multiclass:
            print(report.format_multiclass_table(metrics, title))
        else:
            print(report.format_table(metrics, [task], title))
        for split, j in metrics.get("attention_jaccard", {}).items():
            if j:
                gates = ", ".join(f"{k} {v:.3f}" for k, v in j.items() if k != "images")
                print(
                    f"attention Jaccard with lesion masks ({split}, {j['images']} images): {gates}"
                )
        print(f"metrics:     {out / 'metrics.json'}")
        print(f"predictions: {out / 'predictions.csv'}")
        print(
            f"plots:       {figures}/ ({', '.join(sorted(p.name for p in figures.glob('*.png')))})"
        )
    return metrics


if __name__ == "__main__":
    cli.run_cli(main)
