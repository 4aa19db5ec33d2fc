"""The ARL paper's networks: ARL-CNN14 (from scratch) and ARL-CNN50 (fine-tuned from ResNet-50)."""

from __future__ import annotations

import os
from typing import Any

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from .arl import ARLWrapper
from .checkpoint import load_checkpoint
from .normalize import NormalizationFn

__all__ = ["arl_cnn14", "arl_cnn50", "resnet14"]


def resnet14(num_classes: int = 2, **kwargs: Any) -> ResNet:
    """ResNet-14: bottleneck blocks, one per stage (layers [1, 1, 1, 1]), plain 7x7 stem.

    The plain counterpart of ARL-CNN14 (ARL paper, Table I). ``kwargs`` go to timm's ``ResNet``
    (``in_chans``, ``drop_rate``, ``drop_path_rate``, ``device``, ...).
    """
    model = ResNet(block=Bottleneck, layers=(1, 1, 1, 1), num_classes=num_classes, **kwargs)
    model.pretrained_cfg = {
        "architecture": "resnet14",
        "num_classes": num_classes,
        "input_size": (3, 224, 224),
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1",
        "classifier": "fc",
    }
    return model


def arl_cnn14(
    num_classes: int = 2,
    normalization: str | NormalizationFn = "spatial",
    alpha_init: float = 1e-3,
    **kwargs: Any,
) -> ARLWrapper:
    """ARL-CNN14 (ARL paper, Table I): :func:`resnet14` with every block converted; train from scratch."""
    return ARLWrapper(resnet14(num_classes, **kwargs), normalization, alpha_init, inplace=True)


def arl_cnn50(
    num_classes: int = 2,
    weights: str | os.PathLike | None = None,
    *,
    pretrained: bool = False,
    model_name: str = "resnet50",
    normalization: str | NormalizationFn = "spatial",
    alpha_init: float = 1e-3,
    **kwargs: Any,
) -> ARLWrapper:
    """ARL-CNN50: ResNet-50 with all 16 bottlenecks converted, initialised from ImageNet weights.

    Args:
        num_classes: classifier outputs (the ImageNet head is replaced when it differs).
        weights: a local ResNet-50 checkpoint (timm or torchvision layout; ``.pth``/``.pt``/
            ``.safetensors``). The load report is kept as ``model.load_report``.
        pretrained: download timm's pretrained ``model_name`` instead (needs network access).
        model_name: the timm architecture (and optionally tag), e.g. ``"resnet50.tv_in1k"``.
        normalization, alpha_init: see :class:`ARLWrapper`.
        **kwargs: passed to ``timm.create_model`` (``drop_path_rate``, ``in_chans``, ...).
    """
    if pretrained and weights is not None:
        raise ValueError("arl_cnn50: pass either weights=PATH or pretrained=True, not both")
    plain: nn.Module = timm.create_model(
        model_name, pretrained=pretrained, num_classes=num_classes, **kwargs
    )
    report = load_checkpoint(plain, weights) if weights is not None else None
    model = ARLWrapper(plain, normalization, alpha_init, inplace=True)
    if report is not None:
        model.load_report = report
    return model
