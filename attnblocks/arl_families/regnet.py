"""RegNetX/Y bottlenecks: timm ``regnet`` ``Bottleneck`` / ``PreBottleneck`` and torchvision
``ResBottleneckBlock``.

The post-activation bottlenecks end like a ResNet: ``y = act(s + drop_path(F + alpha * N(F) * s))``,
``F`` after the last norm (SE sits before the last convolution), ``s`` the input or the shortcut
projection. torchvision's last norm and projection norm are plain ``BatchNorm2d``, fused into the
merge. timm's ``PreBottleneck`` adds without an activation; its shortcut is taken after ``norm1``.
A timm block built without a shortcut (``downsample=None``) is left plain.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..arl_registry import BlockSpec, register_block_spec
from ._common import sequential_pre_norm


def _timm_no_skip(b: Any) -> str | None:
    return "no skip connection (downsample=None)" if b.downsample is None else None


def _timm_bottleneck(b: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    f = b.conv3(b.se(b.conv2(b.conv1(x))))
    return f, b.downsample(x)


def _timm_pre_bottleneck(b: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    x = b.norm1(x)
    f = b.norm2(b.conv1(x))
    f = b.norm3(b.se(b.conv2(f)))
    return b.conv3(f), b.downsample(x)


def _tv_bottleneck(b: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    return b.f(x), x if b.proj is None else b.proj(x)


def _tv_pre_norm(b: Any, x: Tensor) -> tuple[Tensor, nn.Module] | None:
    return sequential_pre_norm(b.f, x)


def register() -> None:
    import timm.models.regnet as timm_regnet
    import torchvision.models.regnet as tv_regnet

    register_block_spec(
        timm_regnet.Bottleneck,
        BlockSpec(_timm_bottleneck, "act3", "drop_path", no_skip=_timm_no_skip),
    )
    register_block_spec(
        timm_regnet.PreBottleneck,
        BlockSpec(_timm_pre_bottleneck, None, "drop_path", no_skip=_timm_no_skip),
    )
    register_block_spec(
        tv_regnet.ResBottleneckBlock,
        BlockSpec(_tv_bottleneck, "activation", shortcut="proj", pre_norm=_tv_pre_norm),
    )
