"""ARL-CNN on ISIC 2017 (Zhang, Xie, Xia, Shen, "Attention Residual Learning for Skin Lesion
Classification", IEEE TMI 2019).

Paper protocol as defaults: ARL-CNN50 fine-tuned from a ResNet-50 checkpoint (``--weights PATH``
or ``--pretrained``), SGD with batch 32, lr 1e-4 (ARL-CNN50) or 1e-2 (ARL-CNN14 from scratch)
halved every 30 epochs, at most 100 epochs, alpha initialised to 1e-3, 60 random central patches
per image per epoch, 9 test views averaged, best epoch by validation AUC (early stopping).
``--recipe timm`` trains with timm's AdamW, cosine schedule, EMA and label smoothing instead
(``examples/isic/recipes.py``; not the paper's protocol).

    python examples/isic2017_arl.py                                    # synthetic demo, ~2 min CPU
    python examples/isic2017_arl.py --data-root ISIC2017 --weights resnet50.pth
    python examples/isic2017_arl.py --data-root ISIC2017 --arch arl_cnn14 --no-arl  # ResNet-14
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
    default_synthetic_root,
    isic2017_metrics,
    recipes,
    report,
    viz,
    write_predictions_csv,
)
from examples.isic.data.cache import default_cache_dir
from examples.isic.distributed import shard_loader
from examples.isic.engine import Trainer

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
        choices=sorted(ARCH_LR),
        default=None,
        help="arl_cnn50 (fine-tuned, default) or arl_cnn14 (from scratch); quick: arl_cnn14",
    )
    g.add_argument(
        "--no-arl", action="store_true", help="the plain ResNet baseline (same training)"
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
    g.add_argument("--weights", type=Path, default=None, help="ResNet-50 checkpoint (arl_cnn50)")
    g.add_argument(
        "--pretrained",
        action="store_true",
        help="download timm's ImageNet ResNet-50 (needs network access)",
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


def build_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """ARL-CNN14/50 or, with ``--no-arl``, the plain ResNet-14/50 of the same initialisation."""
    if args.arch == "arl_cnn14":
        if args.weights is not None or args.pretrained:
            raise ValueError(
                "--weights/--pretrained apply to arl_cnn50; arl_cnn14 trains from scratch"
            )
        plain = ab.resnet14(num_classes)
    else:
        if args.weights is not None and args.pretrained:
            raise ValueError("pass either --weights PATH or --pretrained, not both")
        if args.weights is not None and not Path(args.weights).is_file():
            raise ValueError(f"--weights {args.weights}: no such file")
        plain = timm.create_model("resnet50", pretrained=args.pretrained, num_classes=num_classes)
        if args.weights is not None:
            report_ = ab.load_checkpoint(plain, args.weights)
            logging.info("loaded %s: %s", args.weights, report_)
        elif not args.pretrained:
            logging.warning("arl_cnn50 without --weights/--pretrained trains from scratch "
                            "(the paper fine-tunes an ImageNet ResNet-50)")  # fmt: skip
    if args.no_arl:
        return plain
    return ab.ARLWrapper(plain, normalization=args.normalization, alpha_init=args.alpha_init)


def alpha_columns(model: nn.Module) -> dict[str, float]:
    """``{"alpha/layer1.0": value, ...}`` for the log (empty for a plain ResNet)."""
    alphas = model.alphas() if hasattr(model, "alphas") else {}
    return {f"alpha/{k}": float(v) for k, v in alphas.items()}


def cam_figure(
    model: nn.Module,
    dataset,
    args,
    device: torch.device,
    path: Path,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Path:
    """CAM (Eq. 13) of the predicted class, and ARL attention of the last block, on test images."""
    model.eval()
    n = min(args.cam_images, len(dataset))
    items = [dataset[i] for i in range(n)]
    x = torch.stack([it["image"][0] for it in items]).to(device)  # view 0 = the whole image
    with (
        torch.no_grad(),
        ab.record_attention(model) if not args.no_arl else nullcontext({}) as attn,
    ):
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
    names = ISIC2017Dataset.csv_columns if args.task == "both" else ("other", args.task)
    classes = ("nevus", *names) if args.task == "both" else names
    titles = [f"{it['id']}\ntrue {classes[int(it['label'])]}\npred {classes[int(c)]}"
              for it, c in zip(items, cls, strict=True)]  # fmt: skip
    images = viz.denormalize(x, mean, std)
    return viz.save_overlays(images, maps, path, titles)


@cli.script_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    synthetic = args.data_root is None
    paper, quick = recipes.resolve_recipe(args, PAPER, QUICK)
    if args.recipe == "timm":
        paper = {**paper, **TIMM_PROFILE, "lr": None}  # the lr depends on --arch (below)
    cli.resolve_profile(args, paper, quick, use_quick=args.quick or synthetic)
    if args.lr is None:
        args.lr = (TIMM_ARCH_LR if args.recipe == "timm" else ARCH_LR)[args.arch]
    cli.check_common_args(args)
    cli.check_numbers(
        args,
        positive=("patches_per_image", "lr_step", "lr_gamma", "patience", "limit", "load_size"),
        non_negative=("momentum", "weight_decay", "cam_images"),
        finite=("alpha_init",),
    )
    device, info = cli.setup_device(args.device, args.amp)
    root = default_synthetic_root(**SYNTHETIC) if synthetic else args.data_root
    cli.check_layout(root, cli.ISIC2017_LAYOUT, "ISIC 2017")
    args.out = args.out or cli.default_out_dir(SCRIPT)
    out = cli.prepare_out_dir(args.out, args.resume, root) if info.is_main else Path(args.out)
    info.barrier()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    ds_task = "3class" if args.task == "both" else args.task
    tasks = report.isic2017_tasks(ds_task)
    load = {"load_size": args.load_size, "progress": info.is_main and args.progress,
            "skip_bad": args.skip_bad, "cache_workers": args.workers, "verify": True}  # fmt: skip
    if args.load_size is not None:
        load["cache_dir"] = args.cache_dir or default_cache_dir() / "isic2017-resized"
    torch.manual_seed(args.seed)  # the same initial weights for ARL and the plain baseline
    with cli.reading_weights(args.weights):
        model = build_model(args, num_classes=3 if args.task == "both" else 2)
    mean, std = cli.input_normalization(model)  # the pretrained_cfg of the weights' model
    if info.is_main:
        logging.info("input %s (the model's pretrained_cfg)", cli.describe_normalization(mean, std))
    norm = {"color_constancy": args.color_constancy, "mean": mean, "std": std}
    train_tf = arl_train_transform(args.image_size, **norm)
    test_tf = arl_test_transform(args.image_size, args.test_views, **norm)
    splits = {
        "train": ISIC2017Dataset(root, "train", ds_task, train_tf, **load),
        "val": ISIC2017Dataset(root, "val", ds_task, test_tf, **load),
        "test": ISIC2017Dataset(root, "test", ds_task, test_tf, **load),
    }
    if info.is_main:
        cli.write_skipped(out, splits)
    if args.limit is not None:
        splits = {k: v.limit(args.limit) for k, v in splits.items()}
    cli.check_not_empty(splits, root)
    train, val, test = splits["train"], splits["val"], splits["test"]
    sampler = OversamplingSampler(train.labels, base_repeats=args.patches_per_image, seed=args.seed)
    dl = {"batch_size": args.batch_size, "num_workers": args.workers}
    train_loader = DataLoader(
        train, sampler=sampler, drop_last=len(sampler) > args.batch_size, **dl
    )
    val_loader, test_loader = shard_loader(val, info, **dl), shard_loader(test, info, **dl)

    if args.recipe == "timm":  # AdamW, per-step cosine with warm-up, EMA, label smoothing
        optimizer, scheduler = recipes.build_timm_training(model, args, len(train_loader))
        criterion: nn.Module = recipes.timm_loss(args.smoothing)
    else:  # the paper's: SGD, lr halved every --lr-step epochs, cross-entropy
        optimizer = torch.optim.SGD(
            model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, args.lr_step, args.lr_gamma)
        criterion = nn.CrossEntropyLoss()

    def loss_fn(batch: dict, output: torch.Tensor, _model: nn.Module) -> torch.Tensor:
        return criterion(output.float(), batch["label"])

    run_config = cli.run_settings(args)
    trainer = Trainer(
        model, loss_fn, optimizer, out, device, scheduler=scheduler,
        metric_fn=report.isic2017_metric_fn(ds_task), monitor="mean_auc", amp=args.amp,
        channels_last=args.channels_last, compile=args.compile, seed=args.seed,
        patience=args.patience, epoch_log=alpha_columns, run_config=run_config,
        dist_info=info, progress=args.progress, ema_decay=args.ema_decay or None,
    )  # fmt: skip
    if args.recipe == "timm":  # --epochs sets the cosine schedule's length: resume with the same
        trainer.resume_ignore = trainer.resume_ignore - {"epochs"}
    if info.is_main:
        cli.save_config(out, args, data_root=str(root), synthetic=synthetic,
                        datasets={k: v.summary() for k, v in splits.items()},
                        world_size=info.world_size,
                        input_normalization={"mean": mean, "std": std})  # fmt: skip
        print(f"{SCRIPT}: {args.arch}{' (plain ResNet)' if args.no_arl else ''}, task {args.task}, "
              f"{len(train)} train / {len(val)} val / {len(test)} test images"
              f"{' (synthetic default)' if synthetic else ''}, {args.epochs} epochs, out {out}")  # fmt: skip

    history = trainer.fit(train_loader, val_loader, args.epochs, resume=args.resume)
    best_epoch = trainer.load_best()
    preds = trainer.predict(test_loader, desc="test")
    scores, truth = report.isic2017_scores(preds.probs, preds.targets, ds_task)
    metrics = isic2017_metrics(
        truth, scores, tasks=tasks, bootstrap=args.bootstrap, seed=args.ci_seed
    )
    if info.is_main:
        cli.write_json(out / "metrics.json", metrics)
        write_predictions_csv(out / "predictions.csv", preds.ids, scores, tasks, "image_id")
        plots = out / "plots"
        viz.plot_curves(history, plots / "curves.png")
        if not args.no_arl:
            viz.plot_alphas(history, plots / "alphas.png")
        cam_figure(trainer.module, test, args, device, plots / "cam.png", mean, std)
        title = f"test set ({len(test)} images), best epoch {best_epoch} by validation AUC"
        print(report.format_table(metrics, tasks, title))
        print(f"metrics:     {out / 'metrics.json'}")
        print(f"predictions: {out / 'predictions.csv'}")
        print(f"plots:       {plots}/ ({', '.join(sorted(p.name for p in plots.glob('*.png')))})")
        print(f"logs:        {out / 'log.csv'}, TensorBoard: tensorboard --logdir {out / 'tb'}")
    return metrics


if __name__ == "__main__":
    cli.run_cli(main)
