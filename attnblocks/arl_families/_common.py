"""Helpers shared by the block families: why a block has no skip, and the fusable tail of a
``Sequential`` branch."""

from __future__ import annotations

from torch import Tensor, nn

from .. import merge


def shape_change(block: nn.Module) -> str:
    """Why ``block`` has no skip connection, from its convolutions: the stride and channel change,
    or (neither) a block built without one."""
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return "no skip connection"
    c_in, c_out = convs[0].in_channels, convs[-1].out_channels
    stride = max(max(c.stride) for c in convs)
    if stride > 1 or c_in != c_out:
        return f"no skip connection (stride {stride}, {c_in} -> {c_out} channels)"
    return "no skip connection (built without one)"


def sequential_pre_norm(seq: nn.Module, x: Tensor) -> tuple[Tensor, nn.Module] | None:
    """``seq`` (an ``nn.Sequential`` whose last layer is a ``BatchNorm2d``, or whose last layer is a
    ``Sequential`` ending in one, as torchvision's ``Conv2dNormActivation`` without activation) run
    up to that norm: ``(input of the norm, the norm)``; None, before computing anything, when the
    norm cannot be fused or a skipped container has hooks (a fused container is never called)."""
    if not isinstance(seq, nn.Sequential) or len(seq) == 0 or merge.has_hooks(seq):
        return None
    layers = list(seq)
    last = layers[-1]
    if isinstance(last, nn.Sequential) and len(last) > 0:
        if merge.has_hooks(last):
            return None
        inner = list(last)
        layers = layers[:-1] + inner[:-1]
        norm = inner[-1]
    else:
        layers, norm = layers[:-1], last
    if not merge.fusable_norm(norm):
        return None
    for layer in layers:
        x = layer(x)
    return x, norm
