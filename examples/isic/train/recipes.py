"""Two training protocols for the example scripts, chosen by ``--recipe``.

- ``paper`` (default): each paper's own protocol, unchanged (SGD, step decay, the paper's loss).
- ``timm``: an alternative for fine-tuning a pretrained backbone in a small budget, built from
  timm's training utilities: ``timm.optim.create_optimizer_v2`` (AdamW, decoupled weight decay not
  applied to biases and norm layers, optional layer-wise lr decay), ``timm.scheduler.
  CosineLRScheduler`` stepped every iteration with a linear warm-up, ``timm.utils.ModelEmaV3``
  (the EMA weights are the ones validated, kept as ``best.pt`` and tested) and
  ``timm.loss.LabelSmoothingCrossEntropy``.

Defaults of the ``timm`` recipe, for fine-tuning an ImageNet EfficientNet-Lite0 at 224 px on the
~2000 ISIC 2017 training images (batch 32, about 60-100 steps per epoch):

============================  =========  ==================================================
flag                          default    why
============================  =========  ==================================================
``--lr``                      3e-4       AdamW fine-tuning rate; SGD's 0.01 moves a
                                         pretrained backbone far from its features
``--weight-decay``            0.05       AdamW's usual decoupled decay (timm, DeiT recipes)
``--epochs``                  10         ~600-1000 steps: enough for a pretrained backbone;
                                         fits a CPU budget
``--warmup-epochs``           1          linear warm-up from lr/100 while the new head settles
``--min-lr``                  1e-6       cosine floor
``--ema-decay``               0.998      with timm's EMA warm-up (decay ``1 - (1 + step) **
                                         -2/3`` up to this cap): averages the last ~100 steps
                                         of a short run; 0 turns the EMA off
``--smoothing``               0.1        label smoothing of the cross-entropy
``--layer-decay``             none       e.g. 0.75: earlier blocks learn more slowly
``--opt``                     adamw      any ``create_optimizer_v2`` name
============================  =========  ==================================================
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "RECIPES",
    "TIMM_RECIPE",
    "TimmRecipe",
    "add_recipe_args",
    "build_timm_training",
    "resolve_recipe",
    "timm_loss",
]

RECIPES = ("paper", "timm")
# the timm recipe's defaults (the scripts' profiles may add their own, e.g. the ARL patches)
TIMM_RECIPE: dict[str, Any] = {
    "lr": 3e-4,
    "weight_decay": 0.05,
    "epochs": 10,
    "warmup_epochs": 1.0,
    "min_lr": 1e-6,
    "ema_decay": 0.998,
    "smoothing": 0.1,
    "opt": "adamw",
}
# flags that only the timm recipe reads (None under the paper's)
TIMM_ONLY = ("warmup_epochs", "min_lr", "ema_decay", "smoothing", "opt", "layer_decay")


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """``--recipe`` and the timm recipe's flags (their defaults resolve in :func:`resolve_recipe`)."""
    g = parser.add_argument_group("training recipe")
    g.add_argument(
        "--recipe",
        choices=RECIPES,
        default="paper",
        help="paper: the paper's protocol (default); timm: AdamW + cosine with warm-up + EMA + "
        "label smoothing from timm's utilities (see docs/isic_pipelines.md)",
    )
    g.add_argument("--opt", default=None, help="timm recipe: optimizer name (default adamw)")
    g.add_argument(
        "--warmup-epochs", type=float, default=None, help="timm recipe: linear warm-up (default 1)"
    )
    g.add_argument("--min-lr", type=float, default=None, help="timm recipe: cosine floor (1e-6)")
    g.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        help="timm recipe: ModelEmaV3 decay cap (default 0.998; 0: no EMA)",
    )
    g.add_argument(
        "--smoothing", type=float, default=None, help="timm recipe: label smoothing (default 0.1)"
    )
    g.add_argument(
        "--layer-decay",
        type=float,
        default=None,
        help="timm recipe: layer-wise lr decay, e.g. 0.75 (default none)",
    )


def resolve_recipe(
    args: argparse.Namespace, paper: Mapping[str, Any], quick: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the recipe flags and return the ``(paper, quick)`` profiles to resolve with.

    Under ``--recipe timm`` the timm defaults replace the paper's (the command line still wins)
    and fill the timm-only flags; the quick profile keeps its size and epochs with lr 1e-3. Under
    ``--recipe paper`` a timm-only flag given on the command line is an error (it would be
    ignored).
    """
    if args.recipe == "paper":
        given = [f"--{k.replace('_', '-')}" for k in TIMM_ONLY if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} apply to --recipe timm only")
        return dict(paper), dict(quick)
    for key in TIMM_ONLY:
        if getattr(args, key) is None and key in TIMM_RECIPE:
            setattr(args, key, TIMM_RECIPE[key])
    if args.weight_decay is None:
        args.weight_decay = TIMM_RECIPE["weight_decay"]
    for name in ("warmup_epochs", "min_lr", "ema_decay", "smoothing", "layer_decay"):
        value = getattr(args, name)
        if value is not None and (not math.isfinite(value) or value < 0):
            raise ValueError(
                f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}"
            )
    if not args.ema_decay < 1:
        raise ValueError(f"--ema-decay must lie in [0, 1), got {args.ema_decay}")
    if not args.smoothing < 1:
        raise ValueError(f"--smoothing must lie in [0, 1), got {args.smoothing}")
    if args.layer_decay is not None and not 0 < args.layer_decay <= 1:
        raise ValueError(f"--layer-decay must lie in (0, 1], got {args.layer_decay}")
    profile = {**paper, "lr": TIMM_RECIPE["lr"], "epochs": TIMM_RECIPE["epochs"]}
    return profile, {**quick, "lr": 1e-3}


@dataclass(frozen=True)
class TimmRecipe:
    """The settings of the timm recipe (the flags of the same names, resolved by
    :func:`resolve_recipe`): what :func:`build_timm_training` builds."""

    lr: float
    epochs: int
    weight_decay: float = TIMM_RECIPE["weight_decay"]
    opt: str = TIMM_RECIPE["opt"]
    warmup_epochs: float = TIMM_RECIPE["warmup_epochs"]
    min_lr: float = TIMM_RECIPE["min_lr"]
    layer_decay: float | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TimmRecipe:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def build_timm_training(
    model: nn.Module, recipe: TimmRecipe, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, Any]:
    """The timm recipe's optimizer (``create_optimizer_v2``) and per-step cosine scheduler with
    warm-up (``CosineLRScheduler``, ``t_in_epochs=False``) over ``recipe.epochs`` epochs."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    kwargs: dict[str, Any] = {}
    if recipe.layer_decay is not None:
        if not hasattr(model, "group_matcher"):
            raise ValueError(
                f"--layer-decay needs a model with timm's group_matcher; "
                f"{type(model).__name__} has none"
            )
        kwargs["layer_decay"] = recipe.layer_decay
    try:
        optimizer = create_optimizer_v2(
            model, opt=recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay, **kwargs
        )
    except (AssertionError, ValueError) as err:
        raise ValueError(f"--opt {recipe.opt}: {err}") from None
    total = max(1, recipe.epochs * steps_per_epoch)
    warmup = min(round(recipe.warmup_epochs * steps_per_epoch), total - 1)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=total - warmup,
        lr_min=recipe.min_lr,
        warmup_t=warmup,
        warmup_lr_init=recipe.lr / 100,
        warmup_prefix=True,
        t_in_epochs=False,
    )
    return optimizer, scheduler


def timm_loss(smoothing: float) -> nn.Module:
    """``timm.loss.LabelSmoothingCrossEntropy`` (plain cross-entropy when ``smoothing`` is 0)."""
    from timm.loss import LabelSmoothingCrossEntropy

    return LabelSmoothingCrossEntropy(smoothing) if smoothing > 0 else nn.CrossEntropyLoss()
