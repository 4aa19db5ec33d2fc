"""ConvNeXt blocks: timm ``ConvNeXtBlock`` and torchvision ``CNBlock``.

They add without an activation: ``y = s + drop_path(F + alpha * N(F) * s)``, ``F`` the branch after
its MLP and layer scale (``gamma`` / ``layer_scale``), in (N, C, H, W) — the channels-last MLP's
output is permuted back before the merge, so the spatial softmax runs over H*W per channel. ``s`` is
the input, or timm's ``shortcut`` projection where the block changes width or stride.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..arl_registry import BlockSpec, register_block_spec


def _timm_convnext(b: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    f = b.conv_dw(x)
    if b.use_conv_mlp:
        f = b.mlp(b.norm(f))
    else:
        f = b.mlp(b.norm(f.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    if b.gamma is not None:
        f = f.mul(b.gamma.reshape(1, -1, 1, 1))
    return f, b.shortcut(x)


def _tv_cnblock(b: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    return b.layer_scale * b.block(x), x


def register() -> None:
    import timm.models.convnext as timm_convnext
    import torchvision.models.convnext as tv_convnext

    register_block_spec(
        timm_convnext.ConvNeXtBlock, BlockSpec(_timm_convnext, None, "drop_path", "shortcut")
    )
    register_block_spec(tv_convnext.CNBlock, BlockSpec(_tv_cnblock, None, "stochastic_depth"))
