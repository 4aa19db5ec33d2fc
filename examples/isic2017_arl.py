"""ARL-CNN on ISIC 2017 (Zhang, Xie, Xia, Shen, "Attention Residual Learning for Skin Lesion
Classification", IEEE TMI 2019).

Paper protocol as defaults: ARL-CNN50 fine-tuned from a ResNet-50 checkpoint (``--weights PATH``
or ``--pretrained``), SGD with batch 32, lr 1e-4 (ARL-CNN50) or 1e-2 (ARL-CNN14 from scratch)
halved every 30 epochs, at most 100 epochs, alpha initialised to 1e-3, 60 random central patches
per image per epoch, 9 test views averaged, best epoch by validation AUC (early stopping).
``--recipe timm`` trains with timm's AdamW, cosine schedule, EMA and label smoothing instead
(``examples/isic/train/recipes.py``; not the paper's protocol).

    python examples/isic2017_arl.py                                    # synthetic demo, ~2 min CPU
    python examples/isic2017_arl.py --data-root ISIC2017 --weights resnet50.pth
    python examples/isic2017_arl.py --data-root ISIC2017 --arch arl_cnn14 --no-arl  # ResNet-14
    python examples/isic2017_arl.py --data-root ISIC2017 --arch efficientnet_lite0 \
        --weights efficientnet-lite0.pth --recipe timm       # any timm model, ARL-converted
    torchrun --nproc_per_node 4 examples/isic2017_arl.py --data-root ISIC2017 --weights r50.pth

Writes into ``--out``: config.json, log.csv, tb/, checkpoints/{last,best}.pt, metrics.json (Table III
metrics per task and the average AUC), predictions.csv (ISIC 2017 submission format) and
plots/{curves,alphas,cam}.png (alphas over epochs: Fig. 7; CAM overlays: Fig. 5).
See docs/isic_pipelines.md for every flag's source.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python examples/isic2017_arl.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader

import attnblocks as ab
from examples.isic import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ISIC2017Dataset,
    OversamplingSampler,
    arl_test_transform,
    arl_train_transform,
    cli,
    data_root,
    default_synthetic_root,
    weights,
)
from examples.isic.data.cache import default_cache_dir
from examples.isic.eval import (
    isic2017_metrics,
    isic2017_scores,
    isic2017_tasks,
    plots,
    report,
    write_predictions_csv,
)
from examples.isic.train import DistInfo, Trainer, recipes, shard_loader
from examples.run import write_json

SCRIPT = "isic2017_arl"
PAPER = {
    "epochs": 100,
    "batch_size": 32,
    "image_size": 224,
    "lr": None,  # 1e-4 for ARL-CNN50 (fine-tuning), 1e-2 for ARL-CNN14 (from scratch)
    "arch": "arl_cnn50",
    "patches_per_image": 60,
    "limit": None,
    "weight_decay": 1e-4,
}
QUICK = {
    "epochs": 3,
    "batch_size": 16,
    "image_size": 64,
    "lr": 0.01,
    "arch": "arl_cnn14",
    "patches_per_image": 2,
    "limit": 60,
}
ARCH_LR = {"arl_cnn50": 1e-4, "arl_cnn14": 1e-2}
# any other --arch is a timm model converted with ARLWrapper: fine-tuned (--weights/--pretrained)
# at ARL-CNN50's lr, from scratch at ARL-CNN14's
FINE_TUNED, FROM_SCRATCH = "arl_cnn50", "arl_cnn14"
# the timm recipe: AdamW fine-tuning of ARL-CNN50 / from scratch for ARL-CNN14; one patch per image
# per epoch (an epoch is then one pass over the training images)
TIMM_ARCH_LR = {"arl_cnn50": 3e-4, "arl_cnn14": 1e-3}
TIMM_PROFILE = {"patches_per_image": 1}
SYNTHETIC = {"n_train": 150, "n_val": 60, "n_test": 90, "size": 96}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=SCRIPT,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_common_args(p, {**PAPER, "lr": "1e-4 (arl_cnn50) / 1e-2 (arl_cnn14)"})
    g = p.add_argument_group("ARL")
    g.add_argument(
        "--arch",
        default=None,
        help="arl_cnn50 (fine-tuned, default), arl_cnn14 (from scratch), or any timm model name "
        "(e.g. efficientnet_lite0, resnet18): its residual blocks converted with ARLWrapper; "
        "quick: arl_cnn14",
    )
    g.add_argument(
        "--no-arl", action="store_true", help="the plain network baseline (same training)"
    )
    g.add_argument(
        "--normalization",
        choices=ab.list_normalizations(),
        default="spatial",
        help="attention normalization N (Table V); default spatial softmax",
    )
    g.add_argument("--alpha-init", type=float, default=1e-3, help="initial scale gate alpha")
    g.add_argument(
        "--task",
        choices=["melanoma", "seborrheic_keratosis", "both"],
        default="both",
        help="one binary task, or both (one 3-class network scored on both tasks)",
    )
    g.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="local checkpoint: ResNet-50 (arl_cnn50) or the timm --arch (timm or "
        "EfficientNet-PyTorch layout; a TensorFlow port selects the tf_ variant)",
    )
    g.add_argument(
        "--pretrained",
        action="store_true",
        help="download timm's ImageNet weights of --arch (needs network access)",
    )
    g.add_argument(
        "--patches-per-image",
        type=int,
        default=None,
        help="random central patches per image per epoch (paper: 60)",
    )
    g.add_argument(
        "--test-views",
        choices=["deterministic", "random"],
        default="deterministic",
        help="the 9 test views: fixed crops, or 9 random central patches (paper)",
    )
    g.add_argument("--color-constancy", action="store_true", help="gray-world colour constancy")
    g.add_argument("--momentum", type=float, default=0.9, help="paper recipe: SGD momentum")
    g.add_argument(
        "--weight-decay", type=float, default=None, help="default 1e-4 (paper), 0.05 (timm recipe)"
    )
    g.add_argument(
        "--lr-step", type=int, default=30, help="paper recipe: halve the lr every N epochs"
    )
    g.add_argument("--lr-gamma", type=float, default=0.5)
    g.add_argument(
        "--patience",
        type=int,
        default=20,
        help="early stop after N epochs without a better validation AUC",
    )
    g.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use at most N images per split (stratified; quick profile: 60)",
    )
    g.add_argument(
        "--load-size",
        type=int,
        default=None,
        help="decode images once to this shorter side into --cache-dir (large originals)",
    )
    g.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="resized-image cache (default ~/.cache/attnblocks/isic2017-resized)",
    )
    g.add_argument("--cam-images", type=int, default=4, help="test images in plots/cam.png")
    recipes.add_recipe_args(p)
    return p


@dataclass(frozen=True)
class ModelSettings:
    """What :func:`build_model` builds: ``arch`` with (``arl``) or without the ARL blocks."""

    arch: str
    num_classes: int
    arl: bool = True
    normalization: str = "spatial"
    alpha_init: float = 1e-3
    weights: Path | None = None
    pretrained: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelSettings:
        return cls(
            arch=args.arch, num_classes=3 if args.task == "both" else 2, arl=not args.no_arl,
            normalization=args.normalization, alpha_init=args.alpha_init, weights=args.weights,
            pretrained=args.pretrained,
        )  # fmt: skip


@dataclass(frozen=True)
class FigureSettings:
    """What :func:`cam_figure` draws: ``images`` test images of a run on ``task``."""

    images: int
    task: str
    arl: bool
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD


def build_model(settings: ModelSettings) -> nn.Module:
    """ARL-CNN14/50 (:func:`attnblocks.arl_cnn14` / :func:`attnblocks.arl_cnn50`) or, without
    ``arl``, the plain ResNet-14/50 of the same initialisation."""
    s = settings
    if s.arch not in ARCH_LR:
        return build_timm_model(s)
    if s.arch == "arl_cnn14":
        if s.weights is not None or s.pretrained:
            raise ValueError(
                "--weights/--pretrained apply to arl_cnn50; arl_cnn14 trains from scratch"
            )
        if not s.arl:
            return ab.resnet14(s.num_classes)
        return ab.arl_cnn14(s.num_classes, s.normalization, s.alpha_init)
    if s.weights is not None and s.pretrained:
        raise ValueError("pass either --weights PATH or --pretrained, not both")
    if s.weights is not None and not Path(s.weights).is_file():
        raise ValueError(f"--weights {s.weights}: no such file")
    if s.weights is None and not s.pretrained:
        logging.warning("arl_cnn50 without --weights/--pretrained trains from scratch "
                        "(the paper fine-tunes an ImageNet ResNet-50)")  # fmt: skip
    if s.arl:
        model = ab.arl_cnn50(
            s.num_classes, s.weights, pretrained=s.pretrained, normalization=s.normalization,
            alpha_init=s.alpha_init,
        )  # fmt: skip
        load_report = getattr(model, "load_report", None)
    else:
        model = timm.create_model("resnet50", pretrained=s.pretrained, num_classes=s.num_classes)
        load_report = ab.load_checkpoint(model, s.weights) if s.weights is not None else None
    if load_report is not None:
        logging.info("loaded %s: %s", s.weights, load_report)
    return model


def build_timm_model(settings: ModelSettings) -> nn.Module:
    """The timm model ``arch`` (already resolved by :func:`resolve_timm_arch`) with ``weights``
    loaded, converted with :class:`attnblocks.ARLWrapper` unless ``arl`` is off; the plain and the
    ARL network start from the same weights."""
    s = settings
    if s.weights is not None and s.pretrained:
        raise ValueError("pass either --weights PATH or --pretrained, not both")
    arch = s.arch
    if not timm.is_model(arch):
        raise ValueError(f"--arch {arch}: not arl_cnn50, arl_cnn14 or a timm model name")
    model = timm.create_model(arch, pretrained=s.pretrained, num_classes=s.num_classes)
    if s.weights is not None:
        logging.info("loaded %s: %s", s.weights, ab.load_backbone_weights(model, s.weights))
    elif not s.pretrained:
        logging.warning("--arch %s without --weights/--pretrained trains from scratch", arch)
    if s.weights is not None or s.pretrained:  # fine-tuning: the new head starts small
        logging.info(weights.init_new_classifier(model))
    if not s.arl:
        return model
    return ab.ARLWrapper(model, s.normalization, s.alpha_init, inplace=True)


def resolve_timm_arch(args: argparse.Namespace) -> str | None:
    """Replace a timm ``--arch`` by the architecture its ``--weights`` need (the ``tf_`` variant
    for a TensorFlow port), so that config.json records what was built; returns the log line
    (``None`` for arl_cnn14/arl_cnn50)."""
    if args.arch in ARCH_LR:
        return None
    args.arch, line = weights.resolve_architecture(args.arch, args.weights, "--arch")
    return line


def default_lr(args: argparse.Namespace) -> float:
    """``--lr`` when not given: per named architecture and recipe; a timm ``--arch`` takes the
    fine-tuning lr with weights, the from-scratch lr without."""
    table = TIMM_ARCH_LR if args.recipe == "timm" else ARCH_LR
    if args.arch in table:
        return table[args.arch]
    return table[FINE_TUNED if args.weights is not None or args.pretrained else FROM_SCRATCH]


def alpha_columns(model: nn.Module) -> dict[str, float]:
    """``{"alpha/layer1.0": value, ...}`` for the log (empty for a plain ResNet)."""
    alphas = model.alphas() if hasattr(model, "alphas") else {}
    return {f"alpha/{k}": float(v) for k, v in alphas.items()}


def build_datasets(
    args: argparse.Namespace, root: Path, dist_info: DistInfo, mean, std
) -> dict[str, Any]:
    """The train/val/test splits (``ISIC2017Dataset``), their transforms normalising with
    ``mean``/``std`` (the model's ``pretrained_cfg``); at most ``--limit`` images each."""
    load = {"load_size": args.load_size, "progress": dist_info.is_main and args.progress,
            "skip_bad": args.skip_bad, "cache_workers": args.workers, "verify": True}  # fmt: skip
    if args.load_size is not None:
        load["cache_dir"] = args.cache_dir or default_cache_dir() / "isic2017-resized"
    norm = {"color_constancy": args.color_constancy, "mean": mean, "std": std}
    train_tf = arl_train_transform(args.image_size, **norm)
    test_tf = arl_test_transform(args.image_size, args.test_views, **norm)
    task = dataset_task(args.task)
    splits = {
        "train": ISIC2017Dataset(root, "train", task, train_tf, **load),
        "val": ISIC2017Dataset(root, "val", task, test_tf, **load),
        "test": ISIC2017Dataset(root, "test", task, test_tf, **load),
    }
    if dist_info.is_main:
        data_root.write_skipped(args.out, splits)
    if args.limit is not None:
        splits = {k: v.limit(args.limit) for k, v in splits.items()}
    data_root.check_not_empty(splits, root)
    return splits


def dataset_task(task: str) -> str:
    """``--task`` -> the dataset's task (``both``: one 3-class network)."""
    return "3class" if task == "both" else task


def build_optimization(
    model: nn.Module, args: argparse.Namespace, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, Any, nn.Module]:
    """Optimizer, scheduler and criterion of ``--recipe``."""
    if args.recipe == "timm":  # AdamW, per-step cosine with warm-up, EMA, label smoothing
        optimizer, scheduler = recipes.build_timm_training(
            model, recipes.TimmRecipe.from_args(args), steps_per_epoch
        )
        return optimizer, scheduler, recipes.timm_loss(args.smoothing)
    # the paper's: SGD, lr halved every --lr-step epochs, cross-entropy
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, args.lr_step, args.lr_gamma)
    return optimizer, scheduler, nn.CrossEntropyLoss()


def cam_figure(
    model: nn.Module, dataset, device: torch.device, path: Path, settings: FigureSettings
) -> Path:
    """CAM (Eq. 13) of the predicted class, and ARL attention of the last block, on test images."""
    model.eval()
    n = min(settings.images, len(dataset))
    items = [dataset[i] for i in range(n)]
    x = torch.stack([it["image"][0] for it in items]).to(device)  # view 0 = the whole image
    with torch.no_grad(), ab.record_attention(model) if settings.arl else nullcontext({}) as attn:
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
    cls = logits.argmax(1)
    cam = ab.class_activation_map(
        feats.float(), model.get_classifier().weight.detach().float(), cls
    )
    maps = {"CAM (predicted class)": ab.overlay_maps(cam, x.shape[-2:])}
    if attn:
        last = sorted(attn)[-1]
        maps[f"ARL attention {last}"] = ab.overlay_maps(attn[last], x.shape[-2:])
    both = settings.task == "both"
    names = ISIC2017Dataset.csv_columns if both else ("other", settings.task)
    classes = ("nevus", *names) if both else names
    titles = [f"{it['id']}\ntrue {classes[int(it['label'])]}\npred {classes[int(c)]}"
              for it, c in zip(items, cls, strict=True)]  # fmt: skip
    images = plots.denormalize(x, settings.mean, settings.std)
    return plots.save_overlays(images, maps, path, titles)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The flags, their profile (paper, ``--quick``/synthetic, ``--recipe timm``) and checks."""
    args = build_parser().parse_args(argv)
    paper, quick = recipes.resolve_recipe(args, PAPER, QUICK)
    if args.recipe == "timm":
        paper = {**paper, **TIMM_PROFILE, "lr": None}  # the lr depends on --arch (below)
    cli.resolve_profile(args, paper, quick, use_quick=args.quick or args.data_root is None)
    if args.lr is None:
        args.lr = default_lr(args)
    cli.check_common_args(args)
    cli.check_numbers(
        args,
        positive=("patches_per_image", "lr_step", "lr_gamma", "patience", "limit", "load_size"),
        non_negative=("momentum", "weight_decay", "cam_images"),
        finite=("alpha_init",),
    )
    return args


@cli.script_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    # flags and the run folder
    args = parse_args(argv)
    synthetic = args.data_root is None
    device, dist_info = cli.setup_device(args.device, args.amp)
    root = default_synthetic_root(**SYNTHETIC) if synthetic else args.data_root
    data_root.check_layout(root, data_root.ISIC2017_LAYOUT, "ISIC 2017")
    args.out = args.out or cli.default_out_dir(SCRIPT)
    out = cli.prepare_out_dir(args.out, args.resume, root) if dist_info.is_main else Path(args.out)
    dist_info.barrier()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # the model first: the data is normalised as its weights' pretrained_cfg says
    torch.manual_seed(args.seed)  # the same initial weights for ARL and the plain baseline
    arch_line = resolve_timm_arch(args)
    if arch_line is not None and dist_info.is_main:
        logging.info(arch_line)
    with weights.reading_weights(args.weights):
        model = build_model(ModelSettings.from_args(args))
    mean, std = weights.input_normalization(model)
    if dist_info.is_main:
        logging.info("input %s (the model's pretrained_cfg)",
                     weights.describe_normalization(mean, std))  # fmt: skip

    # data
    splits = build_datasets(args, root, dist_info, mean, std)
    train, val, test = splits["train"], splits["val"], splits["test"]
    sampler = OversamplingSampler(train.labels, base_repeats=args.patches_per_image, seed=args.seed)
    dl = {"batch_size": args.batch_size, "num_workers": args.workers}
    train_loader = DataLoader(
        train, sampler=sampler, drop_last=len(sampler) > args.batch_size, **dl
    )
    val_loader = shard_loader(val, dist_info, **dl)
    test_loader = shard_loader(test, dist_info, **dl)

    # training
    task = dataset_task(args.task)
    optimizer, scheduler, criterion = build_optimization(model, args, len(train_loader))

    def loss_fn(batch: dict, output: torch.Tensor, _model: nn.Module) -> torch.Tensor:
        return criterion(output.float(), batch["label"])

    trainer = Trainer(
        model, loss_fn, optimizer, out, device, scheduler=scheduler,
        metric_fn=report.isic2017_metric_fn(task), monitor="mean_auc", amp=args.amp,
        channels_last=args.channels_last, compile=args.compile, seed=args.seed,
        patience=args.patience, epoch_log=alpha_columns, run_config=cli.resume_settings(args),
        resume_defaults=cli.ADDED_DEFAULTS, dist_info=dist_info, progress=args.progress, ema_decay=args.ema_decay or None,
    )  # fmt: skip
    if dist_info.is_main:
        cli.save_config(out, args, device, data_root=str(root), synthetic=synthetic,
                        datasets={k: v.summary() for k, v in splits.items()},
                        world_size=dist_info.world_size,
                        input_normalization={"mean": mean, "std": std})  # fmt: skip
        print(f"{SCRIPT}: {args.arch}{' (plain)' if args.no_arl else ''}, task {args.task}, "
              f"{len(train)} train / {len(val)} val / {len(test)} test images"
              f"{' (synthetic default)' if synthetic else ''}, {args.epochs} epochs, out {out}")  # fmt: skip
    history = trainer.fit(train_loader, val_loader, args.epochs, resume=args.resume)

    # evaluation on the test set with the weights of the best epoch (or the last: --select)
    chosen = trainer.load_tested(args.select)
    preds = trainer.predict(test_loader, desc="test")
    tasks = isic2017_tasks(task)
    scores, truth = isic2017_scores(preds.probs, preds.targets, task)
    metrics = isic2017_metrics(
        truth, scores, tasks=tasks, bootstrap=args.bootstrap, seed=args.ci_seed
    ) | {"epoch": chosen, "select": args.select}

    # outputs
    if dist_info.is_main:
        write_json(out / "metrics.json", metrics)
        write_predictions_csv(out / "predictions.csv", preds.ids, scores, tasks, "image_id")
        figures = out / "plots"
        plots.plot_curves(history, figures / "curves.png")
        if not args.no_arl:
            plots.plot_alphas(history, figures / "alphas.png")
        figure = FigureSettings(args.cam_images, args.task, not args.no_arl, mean, std)
        cam_figure(trainer.module, test, device, figures / "cam.png", figure)
        title = f"test set ({len(test)} images), {report.epoch_title(chosen, args.select)}"
        print(report.format_table(metrics, tasks, title))
        print(f"metrics:     {out / 'metrics.json'}")
        print(f"predictions: {out / 'predictions.csv'}")
        print(
            f"plots:       {figures}/ ({', '.join(sorted(p.name for p in figures.glob('*.png')))})"
        )
        print(f"logs:        {out / 'log.csv'}, TensorBoard: tensorboard --logdir {out / 'tb'}")
    return metrics


if __name__ == "__main__":
    cli.run_cli(main)
