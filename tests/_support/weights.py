"""Checkpoint layouts of other projects written from timm models (for the loaders' tests)."""

from __future__ import annotations

import torch


def to_efficientnet_pytorch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Write a timm EfficientNet's weights in the EfficientNet-PyTorch key layout."""
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1"}
    top["classifier"] = "_fc"
    ir = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1"}
    ir |= {"conv_pwl": "_project_conv", "bn3": "_bn2"}
    ds = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
    out, flat = {}, 0
    for stage in model.blocks:
        for block in stage:
            table = ir if hasattr(block, "conv_pwl") else ds
            for key, value in block.state_dict().items():
                head, rest = key.split(".", 1)
                out[f"_blocks.{flat}.{table[head]}.{rest}"] = value
            flat += 1
    for key, value in model.state_dict().items():
        head, rest = key.split(".", 1)
        if head in top:
            out[f"{top[head]}.{rest}"] = value
    return out
