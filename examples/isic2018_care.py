"""CARE on the imbalanced 7-class ISIC 2018 task 3 (HAM10000): class attention to lesion regions.

Stage 1 trains with cross-entropy; stage 2 adds the CARE term for the rare classes (default DF,
VASC, AKIEC): the Grad-CAM of each rare-class image's class is pushed into its lesion box,
``L = (1 - mix) * CE + mix * sum L_care`` (``attnblocks.CARE``). Nothing is added to the network:
the checkpoints hold the plain timm model. ``--no-care`` runs the same two stages with CE only
(the baseline, same seed and budget).

Boxes: ``--boxes mask`` (default) takes the tight box of the lesion mask *after* augmentation;
``--boxes saliency`` computes a spectral-residual saliency box on the un-augmented image and moves
it through the same ``torchvision.transforms.v2`` geometry as the image (``tv_tensors.BoundingBoxes``).

Data: ``--data-root`` in the official ISIC 2018 layout (images, one-hot CSV, task-1 masks,
``HAM10000_metadata.csv``), split by lesion (train/val/test, seeded, saved as ``OUT/split.json``);
without it, a synthetic 7-class set is generated once and cached.

    python examples/isic2018_care.py --data-root ../shared/data/isic2018_200x150 --out runs/care
    python examples/isic2018_care.py --data-root ... --out runs/base --no-care
    python examples/isic2018_care.py --quick                     # synthetic smoke run, minutes

Outputs (common interface): ``config.json``, ``log.csv``, ``tb/``, ``checkpoints/{last,best}.pt``,
``metrics.json`` (per-class AUC/AP/recall, balanced accuracy, confusion matrix),
``predictions.csv`` (official columns), ``plots/{curves,confusion,attention_rare}.png``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

if __package__ in (None, ""):  # `python examples/isic2018_care.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attnblocks as ab
from examples.isic import ISIC2018Dataset, WeightedSampler, class_balanced_weights
from examples.isic.cli import (
    ADDED_DEFAULTS,
    add_common_args,
    check_common_args,
    check_numbers,
    default_out_dir,
    prepare_out_dir,
    resolve_profile,
    resume_settings,
    run_cli,
    save_config,
    script_main,
    setup_device,
)
from examples.isic.data.synthetic2018 import default_synthetic2018_root
from examples.isic.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from examples.isic.data_root import write_skipped
from examples.isic.eval import multiclass_metrics, write_predictions_csv
from examples.isic.eval.plots import denormalize, plot_confusion, plot_curves, save_overlays
from examples.isic.eval.report import flatten_metrics, format_multiclass_table
from examples.isic.train import Trainer, read_checkpoint, recipes, shard_loader
from examples.isic.train.checkpointing import config_differences
from examples.isic.weights import (
    describe_normalization,
    init_new_classifier,
    input_normalization,
    reading_weights,
    resolve_architecture,
)
from examples.run import atomic_save, write_json

CLASSES = ISIC2018Dataset.class_names
PAPER = {"epochs": 20, "stage1_epochs": 10, "batch_size": 32, "image_size": 224, "lr": 1e-3,
         "weight_decay": 1e-4}  # fmt: skip
QUICK = {"epochs": 2, "stage1_epochs": 1, "batch_size": 16, "image_size": 64, "lr": 1e-3}
SAMPLERS = {"uniform": 0.0, "sqrt": 0.5, "balanced": 1.0}  # class weight power
# settings a run started from another run's stage 1 (--stage1-from) may change: stage 2's
STAGE2_KEYS = {"no_care", "tau", "mix", "outer", "boxes", "box_margin", "stage1_from", "clip_boxes"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p, PAPER)
    g = p.add_argument_group("CARE")
    g.add_argument("--arch", default="efficientnet_lite0", help="timm model name")
    g.add_argument(
        "--weights",
        default="none",
        help="none | timm (download ImageNet weights) | PATH of a local checkpoint "
        "(timm or EfficientNet-PyTorch layout; the classifier is re-initialised)",
    )
    g.add_argument(
        "--target-layer",
        default="auto",
        help="Grad-CAM layer (auto: the last convolutional map, bn2 on an EfficientNet)",
    )
    g.add_argument("--rare-classes", default="DF,VASC,AKIEC", help="comma-separated class names")
    g.add_argument("--stage1-epochs", type=int, default=None, help="CE-only epochs (default 10)")
    g.add_argument("--tau", type=float, default=0.5, help="cap of the inner term (default 0.5)")
    g.add_argument("--mix", type=float, default=0.01, help="weight of the CARE term (0.01)")
    g.add_argument("--outer", choices=ab.list_outer_weightings(), default="uniform")
    g.add_argument("--boxes", choices=["mask", "saliency"], default="mask")
    g.add_argument("--box-margin", type=float, default=0.0, help="widen boxes by this fraction")
    g.add_argument("--clip-boxes", action="store_true", help="clip boxes outside the image")
    g.add_argument("--no-care", action="store_true", help="baseline: CE in both stages")
    g.add_argument("--sampler", choices=list(SAMPLERS), default="uniform")
    g.add_argument(
        "--weight-decay", type=float, default=None, help="AdamW: 1e-4 (default), 0.05 (timm recipe)"
    )
    g.add_argument("--stage1-from", type=Path, default=None,
                   help="start stage 2 from the stage-1 state of another run folder "
                        "(same settings and seed; saves recomputing stage 1)")  # fmt: skip
    g.add_argument("--val-fraction", type=float, default=0.1, help="lesion split (default 0.1)")
    g.add_argument("--test-fraction", type=float, default=0.2, help="lesion split (default 0.2)")
    g.add_argument("--synthetic-n", type=int, default=400, help="synthetic images (no data root)")
    g.add_argument("--train-limit", type=int, default=None,
                   help="train on a random subset of N training images (val/test stay whole)")  # fmt: skip
    recipes.add_recipe_args(p)
    args = p.parse_args(argv)
    use_quick = args.quick or args.data_root is None
    paper, quick = recipes.resolve_recipe(args, PAPER, QUICK)
    if args.recipe == "timm":  # CARE keeps its two stages (10 + 10 epochs)
        paper["epochs"] = PAPER["epochs"]
    resolve_profile(args, paper, quick, use_quick)
    if args.quick and args.arch == "efficientnet_lite0" and "--arch" not in (argv or sys.argv):
        args.arch = "resnet10t"
    return args


def rare_indices(names: str) -> list[int]:
    """Class names -> indices; raises ``ValueError`` for names outside the label set."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    bad = [n for n in wanted if n not in CLASSES]
    if bad or not wanted:
        raise ValueError(f"--rare-classes {bad or names!r} not in the label set {list(CLASSES)}")
    return [CLASSES.index(n) for n in wanted]


def input_size(image_size: int) -> tuple[int, int]:
    """Network input ``(h, w)``: ``image_size`` high, ISIC 2018's 4:3 aspect."""
    return image_size, round(image_size * 4 / 3)


def train_transform(
    size: tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(1.1, 1.6), antialias=True),
        v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), v2.RandomRotation(20),
        v2.ColorJitter(0.1, 0.1, 0.1),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])  # fmt: skip


def eval_transform(
    size: tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    return v2.Compose([
        v2.Resize(size, antialias=True),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])  # fmt: skip


class BoxedISIC(Dataset):
    """ISIC items plus ``box`` (4,) XYXY in the transformed image and ``box_valid``.

    ``boxes="mask"``: the tight box of the transformed lesion mask (valid when the mask is present
    and not cropped away). ``boxes="saliency"``: a box computed once per image on the un-augmented
    image and moved through the transform as ``tv_tensors.BoundingBoxes``.
    """

    def __init__(self, base: ISIC2018Dataset, transform: v2.Transform, boxes: str, margin: float):
        self.base, self.transform, self.mode, self.margin = base, transform, boxes, margin
        self.saliency: torch.Tensor | None = None
        if boxes == "saliency":
            found = []
            for i in range(len(base)):
                image, _ = base.load(i)
                box, valid = ab.boxes_from_saliency(image[None].float() / 255, margin=margin)
                found.append(torch.cat([box[0], valid.float()]))
            self.saliency = torch.stack(found) if found else torch.zeros(0, 5)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, mask = self.base.load(i)
        has_mask = mask is not None
        if mask is None:
            mask = tv_tensors.Mask(torch.zeros((1, *image.shape[-2:]), dtype=torch.uint8))
        if self.saliency is not None:
            h, w = image.shape[-2:]
            box = tv_tensors.BoundingBoxes(
                self.saliency[i, :4][None], format="XYXY", canvas_size=(h, w)
            )
            image, mask, box = self.transform(image, mask, box)
            box = v2.ClampBoundingBoxes()(box).as_subclass(torch.Tensor)[0]
            valid = bool(self.saliency[i, 4]) and bool((box[2:] - box[:2] >= 1).all())
        else:
            image, mask = self.transform(image, mask)
            b, v = ab.boxes_from_masks(mask.as_subclass(torch.Tensor)[None].float(), self.margin)
            box, valid = b[0], bool(v[0]) and has_mask
        return {
            "image": image.as_subclass(torch.Tensor),
            "label": torch.tensor(int(self.base.labels[i])),
            "id": self.base.ids[i],
            "box": box.float(),
            "box_valid": torch.tensor(valid),
        }


@dataclass(frozen=True)
class ModelSettings:
    """What :func:`build_model` builds: timm's ``arch`` with ``num_classes`` outputs, from
    ``weights`` (``"none"``, ``"timm"``: timm's ImageNet weights, or a local file)."""

    arch: str
    num_classes: int = len(CLASSES)
    weights: str = "none"

    @property
    def local_weights(self) -> str | None:
        """The local weights file, if any."""
        return None if self.weights in ("none", "timm") else self.weights


def build_model(settings: ModelSettings) -> nn.Module:
    """The plain timm network (CARE adds nothing to it); local weights load through
    :func:`attnblocks.load_backbone_weights` (timm or EfficientNet-PyTorch layout); a fine-tuned
    model's new classifier gets the fan-in initialisation
    (:func:`examples.isic.weights.init_new_classifier`)."""
    s = settings
    model = timm.create_model(s.arch, pretrained=s.weights == "timm", num_classes=s.num_classes)
    if s.local_weights is not None:
        report = ab.load_backbone_weights(model, s.local_weights, strict=False)
        head = model.default_cfg["classifier"]
        missing = [k for k in report.missing if not k.startswith(head)]
        if missing:
            raise ValueError(f"--weights {report.path} lacks {missing[:5]}")
    if s.weights != "none":  # fine-tuning: the new head starts small (see init_new_classifier)
        init_new_classifier(model)
    return model


class CareSchedule:
    """CARE's two stages. Stage 1 (epochs ``< stage1_epochs``) trains with cross-entropy only;
    stage 2 turns ``care``'s term on (unless ``use_care`` is False: the baseline). ``best.pt`` is
    chosen among the stage-2 epochs by validation balanced accuracy: the ``select`` metric is NaN
    in stage 1.

    The trainer calls :meth:`metric_fn` (validation), :meth:`log_columns` (the log's ``stage`` and
    ``care_enabled``) and :meth:`on_epoch_end` (prints the epoch, starts the next one).
    """

    def __init__(
        self, care: ab.CARE, stage1_epochs: int, use_care: bool, rare: Sequence[int], verbose: bool
    ) -> None:
        self.care, self.stage1_epochs, self.use_care = care, stage1_epochs, use_care
        self.rare, self.verbose = list(rare), verbose
        self.epoch = 0
        self.start(0)

    @property
    def stage(self) -> int:
        """1 or 2: the stage of the epoch being trained."""
        return 2 if self.epoch >= self.stage1_epochs else 1

    def start(self, epoch: int) -> None:
        """Begin ``epoch``: the CARE term is on in stage 2 of a CARE run."""
        self.epoch = epoch
        self.care.enabled = self.stage == 2 and self.use_care

    def metric_fn(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        m = flatten_metrics(multiclass_metrics(targets, probs, CLASSES))
        m["select"] = m["balanced_accuracy"] if self.stage == 2 else math.nan
        return m

    def log_columns(self, _model: nn.Module) -> dict[str, float]:
        return {"stage": self.stage, "care_enabled": float(self.care.enabled)}

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        if self.verbose:
            rare = " ".join(f"{CLASSES[c]} {row[f'val_per_class_{CLASSES[c]}_recall']:.3f}"
                            for c in self.rare)  # fmt: skip
            print(f"epoch {epoch} (stage {row['stage']}): loss {row['train_loss']:.4f} "
                  f"care {row.get('train_care', 0):.4f} "
                  f"val bal.acc {row['val_balanced_accuracy']:.4f} rare recall {rare}")  # fmt: skip
        self.start(epoch + 1)


def load_data(args: argparse.Namespace, out: Path) -> dict[str, BoxedISIC]:
    root = args.data_root
    if root is None:
        root = default_synthetic2018_root(n=args.synthetic_n, size=96, seed=0)
    size = input_size(args.image_size)
    load_size = max(size) if args.data_root is not None else None
    sets = {}
    for split in ("train", "val", "test"):
        base = ISIC2018Dataset(
            root, split, split_file=out / "split.json", load_size=load_size,
            val_fraction=args.val_fraction, test_fraction=args.test_fraction,
            split_mismatch="error" if args.resume else "replace", skip_bad=args.skip_bad,
            cache_workers=args.workers, verify=True, progress=False,
        )  # fmt: skip
        if len(base) == 0:
            raise ValueError(
                f"the lesion-grouped {split} split of {root} is empty; raise --{split}-fraction"
            )
        if split == "train" and args.train_limit is not None:
            base = base.sample(args.train_limit, args.seed)
        tf = train_transform(size) if split == "train" else eval_transform(size)
        sets[split] = BoxedISIC(base, tf, args.boxes, args.box_margin)
    return sets


def seed_stage2_from(args: argparse.Namespace, out: Path, run_config: dict[str, Any]) -> None:
    """Copy the stage-1 state of another run into ``OUT/checkpoints/last.pt`` to resume from it."""
    src = Path(args.stage1_from) / "checkpoints" / "last.pt"
    state = read_checkpoint(src, "--stage1-from")
    if state["epoch"] != args.stage1_epochs - 1:
        raise ValueError(
            f"--stage1-from: {src} is at epoch {state['epoch']}, not at the end of stage 1 "
            f"(epoch {args.stage1_epochs - 1})"
        )
    diff = config_differences(
        state.get("run_config", {}), run_config, STAGE2_KEYS, added_defaults=ADDED_DEFAULTS
    )
    if diff:
        raise ValueError(f"--stage1-from: {src} differs on {diff}")
    state["run_config"] = run_config
    atomic_save(state, out / "checkpoints" / "last.pt")
    if (Path(args.stage1_from) / "split.json").is_file():
        shutil.copyfile(Path(args.stage1_from) / "split.json", out / "split.json")


def check_args(args: argparse.Namespace) -> None:
    """``ValueError`` naming the first CARE flag out of range or in conflict."""
    check_common_args(args)
    check_numbers(
        args,
        positive=("tau", "synthetic_n", "train_limit"),
        non_negative=("box_margin", "weight_decay", "mix"),
        fraction=("val_fraction", "test_fraction"),
    )
    if args.stage1_from is not None and args.recipe == "timm":
        raise ValueError(
            "--stage1-from needs --recipe paper: the timm recipe's cosine schedule and EMA span "
            "both stages, so a stage-1 state of another run does not fit"
        )
    if args.mix > 1:
        raise ValueError(f"--mix must lie in [0, 1], got {args.mix}")
    if args.stage1_epochs > args.epochs or args.stage1_epochs < 0:
        raise ValueError(
            f"--stage1-epochs {args.stage1_epochs} must lie in [0, --epochs {args.epochs}]"
        )


def train_loader_for(data: BoxedISIC, args: argparse.Namespace, distributed: bool) -> DataLoader:
    """The training loader of ``--sampler`` (class-balanced weights; a shuffled sampler under
    ``torchrun``)."""
    weights = class_balanced_weights(data.base.labels, SAMPLERS[args.sampler])
    sampler = WeightedSampler(weights, seed=args.seed) if args.sampler != "uniform" else None
    if sampler is None and distributed:
        sampler = WeightedSampler(np.ones(len(weights)), replacement=False, seed=args.seed)
    # drop a last partial batch only when there is more than one batch: a train split smaller
    # than --batch-size trains in one smaller batch (a single image would break BatchNorm)
    n_train = len(data)
    if n_train < args.batch_size:
        print(f"note: {n_train} training images, fewer than --batch-size {args.batch_size}: "
              "one batch per epoch")  # fmt: skip
    return DataLoader(
        data, sampler=sampler, shuffle=sampler is None, drop_last=n_train > args.batch_size,
        batch_size=args.batch_size, num_workers=args.workers,
    )  # fmt: skip


@torch.no_grad()
def rare_attention(
    model: nn.Module, layer: str, data: BoxedISIC, rare: list[int], device: torch.device
) -> dict[str, float]:
    """Where the Grad-CAM of the true class lies on the rare-class test images with a box.

    ``inside``: mean over images of ``sum(cam * inner)`` (the mean map value in the box);
    ``outside``: mean of ``sum(cam * outer)``; ``n``: images counted (the CARE terms, uncapped).
    """
    was_training = model.training
    model.eval()
    inside, outside = [], []
    for i in np.flatnonzero(np.isin(data.base.labels, rare)):
        item = data[int(i)]
        if not item["box_valid"]:
            continue
        image = item["image"][None].to(device)
        cam, _ = ab.grad_cam(model, image, layer, item["label"][None].to(device))
        inner, outer = ab.box_to_inner_outer(item["box"][None], image.shape[-2:], clip=True)
        cam = cam.cpu()
        inside.append(float((cam * inner).sum()))
        outside.append(float((cam * outer).sum()))
    model.train(was_training)
    n = len(inside)
    return {
        "inside": float(np.mean(inside)) if n else math.nan,
        "outside": float(np.mean(outside)) if n else math.nan,
        "n": n,
    }


def save_rare_overlays(model: nn.Module, layer: str, data: BoxedISIC, rare: list[int],
                       device: torch.device, path: Path, per_class: int = 3,
                       mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD) -> None:  # fmt: skip
    """Grad-CAM of the true class over rare-class test images, with the lesion box drawn."""
    picks = [i for c in rare for i in np.flatnonzero(data.base.labels == c)[:per_class]]
    if not picks:
        return
    items = [data[int(i)] for i in picks]
    images = torch.stack([it["image"] for it in items]).to(device)
    targets = torch.stack([it["label"] for it in items]).to(device)
    was_training = model.training
    model.eval()
    cam, logits = ab.grad_cam(model, images, layer, targets)
    model.train(was_training)
    boxes, valid = (
        torch.stack([it["box"] for it in items]),
        torch.stack([it["box_valid"] for it in items]),
    )
    inner, _ = ab.box_to_inner_outer(boxes, images.shape[-2:], valid=valid, clip=True)
    edge = (inner > 0).float()
    edge = edge - torch.nn.functional.max_pool2d(-edge, 3, 1, 1).neg()  # inner border of the box
    probs = logits.detach().softmax(1)
    titles = [
        f"{it['id']} {CLASSES[int(t)]} p={float(probs[k, t]):.2f}"
        for k, (it, t) in enumerate(zip(items, targets, strict=True))
    ]
    save_overlays(denormalize(images, mean, std),
                  {"Grad-CAM": cam.detach().cpu(), "box": edge.cpu()}, path, titles)  # fmt: skip


@script_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    # flags and the run folder
    args = parse_args(argv)
    check_args(args)
    rare = rare_indices(args.rare_classes)
    device, dist_info = setup_device(args.device, args.amp)
    args.out = args.out or default_out_dir("isic2018_care")
    out = (
        prepare_out_dir(args.out, args.resume, args.data_root) if dist_info.is_main
        else Path(args.out)
    )  # fmt: skip
    dist_info.barrier()

    # data (its transforms normalise as the model's weights say, below)
    torch.manual_seed(args.seed)
    sets = load_data(args, out)
    if dist_info.is_main:
        write_skipped(out, sets)
    if len(sets["train"]) < 2:
        raise ValueError(
            f"CARE needs at least 2 training images (BatchNorm), the train split has "
            f"{len(sets['train'])}; raise --train-limit or lower --val-fraction/--test-fraction"
        )

    # model
    local = None if args.weights in ("none", "timm") else args.weights
    with reading_weights(local):
        args.arch, arch_line = resolve_architecture(args.arch, local, "--arch")
        model = build_model(ModelSettings(args.arch, len(CLASSES), args.weights))
    mean, std = input_normalization(model)
    size = input_size(args.image_size)
    for split, data in sets.items():  # normalise as the weights' pretrained_cfg says
        data.transform = (train_transform if split == "train" else eval_transform)(size, mean, std)
    if dist_info.is_main:
        print(f"{arch_line}; input {describe_normalization(mean, std)} (its pretrained_cfg)")
    # auto: the library's choice, the last convolutional map (bn2 on an EfficientNet, layer4 on a ResNet)
    layer = args.target_layer
    if layer == "auto":
        layer = ab.gradcam.default_target_layer(model)
    train_loader = train_loader_for(sets["train"], args, dist_info.enabled)
    loader_kw = {"batch_size": args.batch_size, "num_workers": args.workers}
    eval_loader = {s: shard_loader(sets[s], dist_info, **loader_kw) for s in ("val", "test")}

    # training: two stages, the CARE term in the second
    scheduler, criterion = None, None
    if args.recipe == "timm":  # AdamW from timm, per-step cosine with warm-up, EMA, smoothed CE
        optimizer, scheduler = recipes.build_timm_training(
            model, recipes.TimmRecipe.from_args(args), len(train_loader)
        )
        criterion = recipes.timm_loss(args.smoothing)
    else:  # AdamW at a constant lr, cross-entropy
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=args.lr, weight_decay=args.weight_decay
        )
    care = ab.CARE(model, layer, rare, num_classes=len(CLASSES), tau=args.tau, mix=args.mix,
                   outer=args.outer, clip_boxes=args.clip_boxes, enabled=False,
                   criterion=criterion)  # fmt: skip
    schedule = CareSchedule(care, args.stage1_epochs, not args.no_care, rare, dist_info.is_main)

    def forward(m: nn.Module, batch: dict) -> Any:
        if m.training and torch.is_grad_enabled():
            return care(batch["image"], batch["label"], batch["box"], batch["box_valid"], model=m)
        return m(batch["image"])

    def loss_fn(batch: dict, output: ab.CAREOutput, m: nn.Module) -> tuple[torch.Tensor, dict]:
        parts = {"ce": output.cls_loss.detach(), "care": output.care_loss.detach()}
        return output.loss, parts | {"boxed": output.selected.sum()}

    run_config = resume_settings(args)
    trainer = Trainer(
        model, loss_fn, optimizer, out, device, scheduler=scheduler,
        metric_fn=schedule.metric_fn, monitor="select", forward=forward, amp=args.amp,
        ema_decay=args.ema_decay or None, channels_last=args.channels_last, compile=args.compile,
        seed=args.seed, run_config=run_config, resume_defaults=ADDED_DEFAULTS,
        dist_info=dist_info, progress=args.progress, epoch_log=schedule.log_columns,
    )  # fmt: skip
    resume = args.resume
    if args.stage1_from is not None and not args.resume:
        seed_stage2_from(args, out, run_config)
        resume = True
    if dist_info.is_main:
        save_config(out, args, device, target_layer=layer, rare_class_indices=rare,
                    data={s: d.base.summary() for s, d in sets.items()},
                    input_normalization={"mean": mean, "std": std})  # fmt: skip
    last = out / "checkpoints" / "last.pt"
    schedule.start(read_checkpoint(last, "--resume")["epoch"] + 1 if resume else 0)
    history = trainer.fit(
        train_loader, eval_loader["val"], args.epochs, resume=resume,
        on_epoch_end=schedule.on_epoch_end,
    )  # fmt: skip

    # evaluation on the test set (the best stage-2 epoch, or the last)
    has_best = (out / "checkpoints" / "best.pt").is_file()  # none when there is no stage 2
    chosen = trainer.load_tested(args.select if has_best else "last")
    preds = trainer.predict(eval_loader["test"], desc="test")
    used_care = not args.no_care and args.epochs > args.stage1_epochs
    metrics = multiclass_metrics(
        preds.targets, preds.probs, CLASSES, bootstrap=args.bootstrap, seed=args.ci_seed
    )
    metrics |= {
        "epoch": chosen,
        "select": args.select if has_best else "last",
        "care": used_care,
        "rare_classes": [CLASSES[c] for c in rare],
        "rare_attention": rare_attention(trainer.module, layer, sets["test"], rare, device),
    }

    # outputs
    if dist_info.is_main:
        write_json(out / "metrics.json", metrics)
        write_predictions_csv(out / "predictions.csv", preds.ids, preds.probs, CLASSES, "image")
        plot_confusion(metrics["confusion_matrix"], CLASSES, out / "plots" / "confusion.png")
        if history:
            plot_curves(history, out / "plots" / "curves.png")
        save_rare_overlays(
            trainer.module, layer, sets["test"], rare, device, out / "plots" / "attention_rare.png",
            mean=mean, std=std,
        )  # fmt: skip
        title = f"ISIC 2018 test ({'CARE' if used_care else 'no CARE'}, epoch {chosen})"
        print(format_multiclass_table(metrics, title))
        print("confusion matrix (rows = truth):", *metrics["confusion_matrix"], sep="\n  ")
        att = metrics["rare_attention"]
        print(f"rare-class Grad-CAM (test, {att['n']} boxed images): mean in box "
              f"{att['inside']:.3f}, mean outside {att['outside']:.3f}")  # fmt: skip
    return metrics


if __name__ == "__main__":
    run_cli(main)
