"""timm ResNetV2 (``resnetv2_*``, BiT): the pre-activation ``PreActBasic`` / ``PreActBottleneck``
and the post-activation ``Bottleneck``.

Pre-activation blocks add without an activation: ``y = s + drop_path(F + alpha * N(F) * s)`` with
``F`` the branch output (the last convolution; there is no norm after it) and ``s`` the input, or
``downsample(norm1(x))`` in a strided or widening block. The post-activation ``Bottleneck``
(``preact=False`` models) is ``act3(s + drop_path(F + alpha * N(F) * s))``, ``F`` after ``norm3``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..arl_registry import BlockSpec, register_block_spec


def _preact_bottleneck(b: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    x_preact = b.norm1(x)
    shortcut = x if b.downsample is None else b.downsample(x_preact)
    f = b.conv1(x_preact)
    f = b.conv2(b.norm2(f))
    return b.conv3(b.norm3(f)), shortcut


def _preact_basic(b: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    x_preact = b.norm1(x)
    shortcut = x if b.downsample is None else b.downsample(x_preact)
    f = b.conv1(x_preact)
    return b.conv2(b.norm2(f)), shortcut


def _bottleneck(b: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    shortcut = x if b.downsample is None else b.downsample(x)
    f = b.norm2(b.conv2(b.norm1(b.conv1(x))))
    return b.norm3(b.conv3(f)), shortcut


def register() -> None:
    import timm.models.resnetv2 as rv2

    register_block_spec(rv2.PreActBottleneck, BlockSpec(_preact_bottleneck, None, "drop_path"))
    if hasattr(rv2, "PreActBasic"):
        register_block_spec(rv2.PreActBasic, BlockSpec(_preact_basic, None, "drop_path"))
    register_block_spec(rv2.Bottleneck, BlockSpec(_bottleneck, "act3", "drop_path"))
