"""The residual block families :class:`~attnblocks.ARLWrapper` converts, one module per family;
each defines its blocks' branch ``F`` and shortcut ``s`` and registers them
(:mod:`attnblocks.arl_registry`)."""

from __future__ import annotations

from . import convnext, efficientnet, regnet, resnet, resnetv2

__all__ = ["register_builtin_blocks"]


def register_builtin_blocks() -> None:
    """Register every built-in block family (timm and torchvision)."""
    for family in (resnet, resnetv2, efficientnet, convnext, regnet):
        family.register()
