"""Recording the attention maps of a forward pass.

Every map-producing module of attnblocks (ARL blocks, grid attention gates) routes its map through a
child ``nn.Identity`` named ``attn_map``. That tap is visible to forward hooks, timm's
``AttentionExtract``, torchvision's feature extractor and pytorch-grad-cam alike; :func:`record_attention`
is the small built-in consumer of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["TAP_NAME", "attention_taps", "record_attention"]

TAP_NAME = "attn_map"


def attention_taps(model: nn.Module) -> dict[str, nn.Module]:
    """Return the attention taps of ``model`` keyed by the name of the module that owns each tap.

    A tap is any submodule whose own name is ``attn_map``; its key is the owner's qualified name
    (``"layer1.0"`` for ``layer1.0.attn_map``; ``""`` when the tap belongs to ``model`` itself).
    """
    taps: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        owner, _, leaf = name.rpartition(".")
        if leaf == TAP_NAME:
            taps[owner] = module
    return taps


@contextmanager
def record_attention(
    model: nn.Module, *, detach: bool = True, include: list[str] | str | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the attention maps produced while the context is open.

    Yields a dict that is filled during each forward pass: one entry per attention tap, keyed by the
    owning block's name (e.g. ``"layer1.0"``), holding the map of the *last* forward pass. Maps are
    detached unless ``detach=False`` (then they stay in the graph, e.g. for a regularizer).

    Args:
        model: any module containing attnblocks attention modules.
        detach: detach the recorded maps from the autograd graph.
        include: only record these owners (names as returned by :func:`attention_taps`; one
            name as a str is one owner).

    Raises:
        ValueError: if ``model`` has no attention tap, ``include`` names an unknown owner, or is
            empty (it would record nothing).
        TypeError: ``model`` is not a module, ``detach`` not a bool.

    Example:
        >>> import timm, torch, attnblocks as ab
        >>> m = ab.ARLWrapper(timm.create_model("resnet18", num_classes=2)).eval()
        >>> with ab.record_attention(m) as maps:
        ...     _ = m(torch.randn(1, 3, 64, 64))
        >>> maps["layer1.0"].shape
        torch.Size([1, 64, 16, 16])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"record_attention: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(detach, bool):
        raise TypeError(f"record_attention: detach must be True or False, got {detach!r}")
    if isinstance(include, str):  # one owner, as ARLWrapper(blocks="layer4") takes one name
        include = [include]
    if include is not None:
        if not isinstance(include, Iterable):
            raise TypeError(
                f"record_attention: include must be a list of owner names, got {include!r}"
            )
        include = list(include)
        if not include:
            raise ValueError(
                "record_attention: include=[] records nothing; pass None to record every tap"
            )
    taps = attention_taps(model)
    if not taps:
        raise ValueError(
            f"{type(model).__name__} has no attention tap (no submodule named {TAP_NAME!r}); "
            "convert it first, e.g. with attnblocks.ARLWrapper"
        )
    if include is not None:
        unknown = sorted(set(include) - set(taps))
        if unknown:
            raise ValueError(f"unknown attention owners {unknown}; known: {sorted(taps)}")
        taps = {k: v for k, v in taps.items() if k in include}
    maps: dict[str, torch.Tensor] = {}

    def make_hook(key: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            maps[key] = output.detach() if detach else output

        return hook

    handles = [tap.register_forward_hook(make_hook(key)) for key, tap in taps.items()]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()
