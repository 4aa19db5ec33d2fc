"""ResNet ``BasicBlock`` / ``Bottleneck`` of timm (ResNet, ResNeXt, wide, SE/ECA, d/s/t stems,
blur/aa) and torchvision: ``y = act(s + drop_path(F + alpha * N(F) * s))``, ``F`` after ``bn3``
(``bn2``) and SE; the last BatchNorm and the shortcut projection's are fused into the merge."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..arl_registry import register_arl_block

# Each branch is written once, up to the input of its last norm (``*_conv``, or the ``pre_norm``
# function itself where it never declines); the residual function applies that norm (and SE), the
# ``pre_norm`` function hands the norm's input to the fused merge.


def _timm_bottleneck_conv(b: Any, x: Tensor) -> Tensor:
    x = b.act1(b.bn1(b.conv1(x)))
    x = b.aa(b.act2(b.drop_block(b.bn2(b.conv2(x)))))
    return b.conv3(x)


def _timm_bottleneck_branch(b: Any, x: Tensor) -> Tensor:
    x = b.bn3(_timm_bottleneck_conv(b, x))
    return x if b.se is None else b.se(x)


def _timm_bottleneck_pre_norm(b: Any, x: Tensor) -> Tensor | None:
    # SE sits between the last norm and the merge: nothing to fuse
    return None if b.se is not None else _timm_bottleneck_conv(b, x)


def _timm_basic_conv(b: Any, x: Tensor) -> Tensor:
    return b.conv2(b.aa(b.act1(b.drop_block(b.bn1(b.conv1(x))))))


def _timm_basic_branch(b: Any, x: Tensor) -> Tensor:
    x = b.bn2(_timm_basic_conv(b, x))
    return x if b.se is None else b.se(x)


def _timm_basic_pre_norm(b: Any, x: Tensor) -> Tensor | None:
    return None if b.se is not None else _timm_basic_conv(b, x)


def _tv_bottleneck_pre_norm(b: Any, x: Tensor) -> Tensor:
    x = b.relu(b.bn1(b.conv1(x)))
    x = b.relu(b.bn2(b.conv2(x)))
    return b.conv3(x)


def _tv_bottleneck_branch(b: Any, x: Tensor) -> Tensor:
    return b.bn3(_tv_bottleneck_pre_norm(b, x))


def _tv_basic_pre_norm(b: Any, x: Tensor) -> Tensor:
    return b.conv2(b.relu(b.bn1(b.conv1(x))))


def _tv_basic_branch(b: Any, x: Tensor) -> Tensor:
    return b.bn2(_tv_basic_pre_norm(b, x))


def register() -> None:
    import timm.models.resnet as timm_resnet
    import torchvision.models.resnet as tv_resnet

    register_arl_block(
        timm_resnet.Bottleneck,
        _timm_bottleneck_branch,
        act="act3",
        drop_path="drop_path",
        pre_norm=_timm_bottleneck_pre_norm,
        last_norm="bn3",
    )
    register_arl_block(
        timm_resnet.BasicBlock,
        _timm_basic_branch,
        act="act2",
        drop_path="drop_path",
        pre_norm=_timm_basic_pre_norm,
        last_norm="bn2",
    )
    register_arl_block(
        tv_resnet.Bottleneck,
        _tv_bottleneck_branch,
        act="relu",
        pre_norm=_tv_bottleneck_pre_norm,
        last_norm="bn3",
    )
    register_arl_block(
        tv_resnet.BasicBlock,
        _tv_basic_branch,
        act="relu",
        pre_norm=_tv_basic_pre_norm,
        last_norm="bn2",
    )
