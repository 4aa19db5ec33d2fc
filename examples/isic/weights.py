"""A model's weights file and input normalisation, as the scripts report them.

- :func:`reading_weights`: a weights file that cannot be loaded becomes a ``ValueError`` naming the
  flag and the file.
- :func:`resolve_architecture`: the timm architecture a weights file needs
  (:func:`attnblocks.architecture_for_weights`), with the line the log prints.
- :func:`input_normalization`: the model's ``pretrained_cfg`` mean/std, which every transform of a
  run uses.
- :func:`init_new_classifier`: the fan-in initialisation of a classifier that fine-tuning adds.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import torch

import attnblocks as ab

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "describe_normalization",
    "init_new_classifier",
    "input_normalization",
    "reading_weights",
    "resolve_architecture",
]


@contextlib.contextmanager
def reading_weights(path: str | os.PathLike | None, flag: str = "--weights"):
    """Report a weights file that cannot be read or loaded (truncated, corrupted, other shapes) as
    a ``ValueError`` naming ``flag`` and the file instead of torch's internal error."""
    try:
        yield
    except (RuntimeError, ValueError, pickle.UnpicklingError, EOFError) as err:
        if path is None or str(err).startswith(flag):  # no file, or the message names it already
            raise
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{flag} {path}: cannot load these weights ({reason})") from err


def resolve_architecture(
    name: str, weights: str | os.PathLike | None, flag: str = "--backbone"
) -> tuple[str, str]:
    """The timm architecture to build for ``name`` and a local ``weights`` file, and a line that
    says which (and why, when it differs: a checkpoint ported from TensorFlow needs the ``tf_``
    variant; see :func:`attnblocks.architecture_for_weights`)."""
    if weights is not None and not Path(weights).is_file():
        raise ValueError(f"--weights {weights}: no such file")
    try:
        arch, why = ab.architecture_for_weights(name, weights)
    except ValueError as err:  # a truncated or foreign file
        raise ValueError(f"--weights {weights}: cannot load these weights ({err})") from err
    if why is None:
        return arch, f"architecture {arch}"
    return arch, f"architecture {arch} ({flag} {name} with --weights {weights}: {why})"


def input_normalization(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of the model's ``pretrained_cfg`` (timm's preprocessing of its weights);
    ImageNet's when the model has none. Every transform of a run (training, validation, test
    views, predictions, figures) normalises with these."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3 or not all(v > 0 and math.isfinite(v) for v in std):
        raise ValueError(
            f"{type(model).__name__}.pretrained_cfg has mean {mean} / std {std}; expected three "
            "channel means and three positive stds"
        )
    return mean, std


def describe_normalization(mean: Sequence[float], std: Sequence[float]) -> str:
    """``"mean (0.5, 0.5, 0.5) std (0.5, 0.5, 0.5)"`` for the log."""
    return f"mean ({', '.join(f'{v:g}' for v in mean)}) std ({', '.join(f'{v:g}' for v in std)})"


def init_new_classifier(model: torch.nn.Module) -> str:
    """Give the classifier of a model about to be fine-tuned from ImageNet weights PyTorch's
    default ``nn.Linear`` initialisation (uniform in +-1/sqrt(fan_in)); returns a line for the log.

    timm initialises EfficientNet/MobileNet classifiers uniform in +-1/sqrt(num_classes): right for
    1000 classes, but with 3 or 7 the new head starts at logits of std ~5 on ImageNet Lite0
    features (cross-entropy ~1.8-2.3 instead of ~1.1), and the warm-up epoch is spent shrinking
    it. The fan-in initialisation (torchvision's, and that of timm's ResNets) starts at ~0.4.
    """
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, torch.nn.Linear):
        return "classifier: kept (not a single nn.Linear)"
    head.reset_parameters()
    return f"classifier {tuple(head.weight.shape)}: PyTorch's fan-in initialisation"
