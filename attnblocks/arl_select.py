"""What :class:`~attnblocks.ARLWrapper` converts: the ``blocks`` selection, the report of converted
and skipped blocks, and the block-like modules it does not know."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch import nn

from .arl_registry import _BLOCK_SPECS

__all__ = ["ConversionReport", "select_blocks", "unsupported_blocks"]


@dataclass
class ConversionReport:
    """What :class:`~attnblocks.ARLWrapper` did to a model."""

    model: str
    normalization: str
    alpha_init: float
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    new_keys: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"ARL conversion of {self.model}: {len(self.converted)} blocks converted "
            f"(normalization={self.normalization!r}, alpha_init={self.alpha_init:g})",
            f"  converted: {', '.join(self.converted) or '-'}",
        ]
        for name, why in self.skipped.items():
            lines.append(f"  skipped:   {name} ({why})")
        lines.append(f"  new state-dict keys: {', '.join(self.new_keys) or '-'}")
        return "\n".join(lines)


def _looks_like_block(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return any(hasattr(module, a) for a in ("downsample", "has_skip", "use_res_connect")) or any(
        word in name for word in ("block", "bottleneck", "residual")
    )


def unsupported_blocks(
    model: nn.Module, is_converted: Callable[[nn.Module], bool]
) -> dict[str, str]:
    """Block-like modules that are neither registered, converted, inside such a block, nor a
    container of such blocks (a stage): what the report lists as unsupported."""
    names = [n for n, m in model.named_modules() if type(m) in _BLOCK_SPECS or is_converted(m)]

    def related(name: str) -> bool:
        return any(b == name or b.startswith(name + ".") or name.startswith(b + ".") for b in names)

    found: dict[str, str] = {}
    for n, m in model.named_modules():
        if m is model or any(n.startswith(p + ".") for p in found):  # not inside a reported one
            continue
        if _looks_like_block(m) and not related(n):
            found[n] = f"unsupported block type {type(m).__name__}"
    return found


_BLOCKS_ACCEPTS = (
    "None (all blocks), a block name or prefix (str, e.g. 'layer4'), a non-empty list of them, "
    "or a predicate (name, module) -> bool"
)


def select_blocks(
    candidates: list[tuple[str, nn.Module]],
    blocks: Iterable[str] | Callable[[str, nn.Module], bool] | None,
) -> set[str]:
    names = [n for n, _ in candidates]
    if blocks is None:
        return set(names)
    if isinstance(blocks, nn.Module):
        raise TypeError(f"blocks must be {_BLOCKS_ACCEPTS}; got the module {type(blocks).__name__}")
    if callable(blocks):
        chosen = {n for n, m in candidates if blocks(n, m)}
        if not chosen:
            raise ValueError(
                f"blocks: the predicate selects none of the convertible blocks {names}; the model "
                "would be returned unconverted"
            )
        return chosen
    if isinstance(blocks, str):
        blocks = [blocks]
    if isinstance(blocks, bytes) or not isinstance(blocks, Iterable):
        raise TypeError(f"blocks must be {_BLOCKS_ACCEPTS}; got {type(blocks).__name__} {blocks!r}")
    given = blocks
    blocks = list(blocks)
    if not blocks:
        raise ValueError(
            f"blocks={given!r} selects no block, so nothing would be converted; pass None to "
            f"convert all of {names}, or name some of them"
        )
    for pattern in blocks:
        if not isinstance(pattern, str):
            raise TypeError(
                f"blocks must be {_BLOCKS_ACCEPTS}; got the entry {pattern!r} "
                f"({type(pattern).__name__}) in {blocks!r}"
            )
    chosen: set[str] = set()
    for pattern in blocks:
        pattern = pattern.rstrip(".")
        hits = [n for n in names if n == pattern or n.startswith(pattern + ".")]
        if not hits:
            raise ValueError(
                f"blocks: {pattern!r} matches no convertible block; candidates: {names}"
            )
        chosen.update(hits)
    return chosen
