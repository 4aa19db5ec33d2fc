"""The ARL merge: the element-wise epilogue of an attention residual block.

    y = act( s + drop_path( F + alpha * A * s ) ),   A = N(F)

``F`` is the residual branch (after its last norm and SE, before the activation), ``s`` the shortcut,
``alpha`` the block's learnable scale gate and ``A`` the attention mask. With ``alpha = 0`` this is the
plain residual block ``act(s + drop_path(F))``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["arl_merge", "arl_merge_reference"]


def arl_merge_reference(
    f: Tensor,
    shortcut: Tensor,
    alpha: Tensor,
    attn: Tensor,
    act: Callable[[Tensor], Tensor],
    drop_path: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Straightforward ARL merge, one autograd op per term.

    Args:
        f: residual branch ``F``, ``(N, C, H, W)``.
        shortcut: shortcut ``s``, same shape as ``f``.
        alpha: scalar scale gate.
        attn: attention mask ``N(F)``, same shape as ``f``.
        act: the block's output activation.
        drop_path: stochastic depth applied to the whole branch ``F + alpha * A * s`` (or None).

    Returns:
        The block output, same shape as ``f``.
    """
    branch = f + alpha * attn * shortcut
    if drop_path is not None:
        branch = drop_path(branch)
    return act(shortcut + branch)


arl_merge = arl_merge_reference
