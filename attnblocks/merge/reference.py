"""The ARL merge written with plain tensor ops: the definition every fused kernel is tested against,
and what ``torch.export``, ONNX, ``torch.jit.trace`` and ``torch.fx`` record."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["arl_merge_reference"]


def arl_merge_reference(
    f: Tensor,
    shortcut: Tensor,
    alpha: Tensor,
    attn: Tensor,
    act: Callable[[Tensor], Tensor],
    drop_path: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Straightforward ARL merge ``act(s + drop_path(F + alpha * A * s))``, one autograd op per term.

    Args:
        f: residual branch ``F``, ``(N, C, H, W)``.
        shortcut: shortcut ``s``, same shape as ``f``.
        alpha: scalar scale gate.
        attn: attention mask ``A = N(F)``, same shape as ``f``.
        act: the block's output activation.
        drop_path: stochastic depth applied to the whole branch ``F + alpha * A * s`` (or None).

    Returns:
        The block output, same shape as ``f``.
    """
    branch = f + alpha * attn * shortcut
    if drop_path is not None:
        branch = drop_path(branch)
    return act(shortcut + branch)
