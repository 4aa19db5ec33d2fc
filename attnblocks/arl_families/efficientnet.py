"""Inverted residuals and their relatives: timm's ``_efficientnet_blocks`` (EfficientNet,
EfficientNet-Lite, MobileNetV2/V3/V4, MNASNet, ...) and torchvision's MobileNetV2/V3 and
EfficientNet/V2 blocks.

These blocks add without an activation: ``y = s + drop_path(F + alpha * N(F) * s)``, ``s = x``,
``F`` the output of the last norm (after SE, which sits before the projection; after the layer
scale of MobileNetV4's universal inverted residual). Only blocks with a
skip connection (timm ``has_skip``, torchvision ``use_res_connect``: stride 1, same width) are
converted. torchvision's last norm is a plain ``BatchNorm2d``, fused into the merge.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..arl_registry import BlockSpec, register_block_spec
from ._common import sequential_pre_norm, shape_change


def _timm_no_skip(b: Any) -> str | None:
    return None if b.has_skip else shape_change(b)


def _tv_no_skip(b: Any) -> str | None:
    return None if b.use_res_connect else shape_change(b)


def _s2d(b: Any, x: Tensor) -> Tensor:
    if getattr(b, "conv_s2d", None) is not None:
        x = b.bn_s2d(b.conv_s2d(x))
    return x


def _timm_inverted_residual(b: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    f = b.bn1(b.conv_pw(_s2d(b, x)))
    f = b.se(b.aa(b.bn2(b.conv_dw(f))))
    return b.bn3(b.conv_pwl(f)), x


def _timm_depthwise_separable(b: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    f = b.se(b.aa(b.bn1(b.conv_dw(_s2d(b, x)))))
    return b.bn2(b.conv_pw(f)), x


def _timm_universal_inverted_residual(b: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    f = b.se(b.dw_mid(b.pw_exp(b.dw_start(x))))
    return b.layer_scale(b.dw_end(b.pw_proj(f))), x


def _timm_conv_bn_act(b: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    return b.aa(b.bn1(b.conv(x))), x


def _timm_edge_residual(b: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    f = b.se(b.aa(b.bn1(b.conv_exp(x))))
    return b.bn2(b.conv_pwl(f)), x


def _tv_block(b: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    return b.block(x), x


def _tv_block_pre_norm(b: Any, x: Tensor) -> tuple[Tensor, nn.Module] | None:
    return sequential_pre_norm(b.block, x)


def _tv_v2(b: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    return b.conv(x), x


def _tv_v2_pre_norm(b: Any, x: Tensor) -> tuple[Tensor, nn.Module] | None:
    return sequential_pre_norm(b.conv, x)


def register() -> None:
    import timm.models._efficientnet_blocks as eb
    import torchvision.models.efficientnet as tv_eff
    import torchvision.models.mobilenetv2 as tv_mnv2
    import torchvision.models.mobilenetv3 as tv_mnv3

    for cls, fn in (
        (eb.InvertedResidual, _timm_inverted_residual),
        (eb.DepthwiseSeparableConv, _timm_depthwise_separable),
        (eb.EdgeResidual, _timm_edge_residual),
        (eb.UniversalInvertedResidual, _timm_universal_inverted_residual),
        (eb.ConvBnAct, _timm_conv_bn_act),
    ):
        register_block_spec(cls, BlockSpec(fn, None, "drop_path", no_skip=_timm_no_skip))
    register_block_spec(
        tv_mnv2.InvertedResidual,
        BlockSpec(_tv_v2, None, no_skip=_tv_no_skip, pre_norm=_tv_v2_pre_norm),
    )
    register_block_spec(
        tv_mnv3.InvertedResidual,
        BlockSpec(_tv_block, None, no_skip=_tv_no_skip, pre_norm=_tv_block_pre_norm),
    )
    for cls in (tv_eff.MBConv, tv_eff.FusedMBConv):
        register_block_spec(
            cls,
            BlockSpec(
                _tv_block,
                None,
                "stochastic_depth",
                no_skip=_tv_no_skip,
                pre_norm=_tv_block_pre_norm,
            ),
        )
