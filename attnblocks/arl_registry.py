"""The residual block types ARL can convert, and how each one splits into a branch and a shortcut.

A block type is described by a :class:`BlockSpec`: how to compute its residual branch ``F`` and its
shortcut ``s``, which of its attributes is the output activation and which the stochastic-depth
module, when an instance has no skip connection (and is left plain), and optionally how to stop the
branch at the input of its last ``BatchNorm2d`` so that the memory-lean merge can fuse that norm.
The built-in block families live in :mod:`attnblocks.arl_families`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["BlockSpec", "list_arl_block_types", "register_arl_block", "register_block_spec"]

ResidualFn = Callable[[nn.Module, Tensor], Tensor]
BranchesFn = Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]]
#: ``pre_norm(block, x) -> (t, norm)``: the branch up to the input ``t`` of its last norm layer
#: ``norm``, or ``None`` (decided before computing anything) when that instance cannot be fused.
PreNormFn = Callable[[nn.Module, Tensor], "tuple[Tensor, nn.Module] | None"]
SkipFn = Callable[[nn.Module], "str | None"]


@dataclass(frozen=True)
class BlockSpec:
    """How an ARL block of one type computes ``y = act(s + drop_path(F + alpha * N(F) * s))``.

    Attributes:
        branches: ``branches(block, x) -> (F, s)``; ``F`` after the last norm, layer scale and SE,
            before stochastic depth; ``s`` the shortcut, of ``F``'s shape.
        act: attribute name of the output activation after the sum, or None (no activation).
        drop_path: attribute name of the stochastic-depth module applied to ``F``, or None.
        shortcut: attribute name of the shortcut projection (its value None at run time = identity),
            or None when the shortcut is always the input; used by the fused path.
        no_skip: ``no_skip(block) -> reason``: why this instance has no skip connection (it is left
            plain), or None when it has one.
        pre_norm: see :data:`PreNormFn`; with it the fused merge (:func:`attnblocks.merge.arl_merge_bn`)
            takes over the block's last norm and shortcut norm. Requires ``shortcut``-style blocks.
    """

    branches: BranchesFn
    act: str | None
    drop_path: str | None = None
    shortcut: str | None = None
    no_skip: SkipFn | None = None
    pre_norm: PreNormFn | None = None


_BLOCK_SPECS: dict[type, BlockSpec] = {}


def register_block_spec(block_cls: type[nn.Module], spec: BlockSpec) -> None:
    """Register ``spec`` for ``block_cls`` (matched by exact class)."""
    if not (isinstance(block_cls, type) and issubclass(block_cls, nn.Module)):
        raise TypeError(f"block_cls must be an nn.Module subclass, got {block_cls!r}")
    if not isinstance(spec, BlockSpec):
        raise TypeError(f"spec must be a BlockSpec, got {type(spec).__name__}")
    _BLOCK_SPECS[block_cls] = spec


def _attr_shortcut(name: str | None) -> Callable[[nn.Module, Tensor], Tensor]:
    def shortcut(block: nn.Module, x: Tensor) -> Tensor:
        proj = getattr(block, name) if name is not None else None
        return x if proj is None else proj(x)

    return shortcut


def register_arl_block(
    block_cls: type[nn.Module],
    residual: ResidualFn,
    *,
    act: str | None,
    drop_path: str | None = None,
    downsample: str | None = "downsample",
    pre_norm: Callable[[nn.Module, Tensor], Tensor | None] | None = None,
    last_norm: str | None = None,
    no_skip: SkipFn | None = None,
) -> None:
    """Teach :class:`~attnblocks.ARLWrapper` a residual block type.

    Args:
        block_cls: the block class (matched exactly, not by ``isinstance``, so that a subclass with a
            different ``forward`` is never converted with the wrong equations).
        residual: ``residual(block, x) -> F``, the residual branch up to the last norm (and SE,
            layer scale), before stochastic depth.
        act: attribute name of the block's output activation after the sum; ``None`` for a block
            that adds without an activation (inverted residuals, ConvNeXt, pre-activation blocks).
        drop_path: attribute name of its stochastic-depth module, if it has one.
        downsample: attribute name of its shortcut projection (its value ``None`` at run time =
            identity); ``None`` when the shortcut is always the block's input.
        pre_norm: optional ``pre_norm(block, x) -> t``, the residual branch up to the *input* of
            its last norm layer (or ``None`` when that block instance cannot be fused, e.g. it has
            SE after the norm); with ``last_norm`` it lets the memory-lean merge
            (:func:`attnblocks.merge.arl_merge_bn`) recompute ``F`` in backward instead of saving it.
        last_norm: attribute name of that last norm layer (required with ``pre_norm``).
        no_skip: optional ``no_skip(block) -> reason``: why an instance has no skip connection
            (it is then left plain and listed in ``conversion_report.skipped``), or ``None``.

    Raises:
        TypeError: ``block_cls`` is not an ``nn.Module`` subclass, or a function is not callable.
        ValueError: ``pre_norm`` without ``last_norm`` or the other way round.
    """
    if not (isinstance(block_cls, type) and issubclass(block_cls, nn.Module)):
        raise TypeError(f"block_cls must be an nn.Module subclass, got {block_cls!r}")
    if not callable(residual):
        raise TypeError(f"register_arl_block: residual must be callable, got {residual!r}")
    for name, fn in (("pre_norm", pre_norm), ("no_skip", no_skip)):
        if fn is not None and not callable(fn):
            raise TypeError(f"register_arl_block: {name} must be callable, got {fn!r}")
    for name, value in (("act", act), ("drop_path", drop_path), ("downsample", downsample)):
        if value is not None and not isinstance(value, str):
            raise TypeError(
                f"register_arl_block: {name} must be an attribute name (str) or None, got {value!r}"
            )
    if (pre_norm is None) != (last_norm is None):
        raise ValueError("pre_norm and last_norm must be given together")
    shortcut = _attr_shortcut(downsample)

    def branches(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        return residual(block, x), shortcut(block, x)

    fused: PreNormFn | None = None
    if pre_norm is not None:

        def fused(block: nn.Module, x: Tensor) -> tuple[Tensor, nn.Module] | None:
            t = pre_norm(block, x)
            return None if t is None else (t, getattr(block, last_norm))

    register_block_spec(
        block_cls,
        BlockSpec(branches, act, drop_path, downsample, no_skip, fused),
    )


def list_arl_block_types() -> list[str]:
    """Qualified names of the block types that :class:`~attnblocks.ARLWrapper` converts."""
    return sorted(f"{c.__module__}.{c.__qualname__}" for c in _BLOCK_SPECS)
