"""Deployment helper: a network's attention maps as extra outputs of its forward pass.

Exporters (``torch.export``, ``torch.onnx.export``, ``torch.jit.trace``) keep what ``forward``
returns. :class:`AttentionOutputs` wraps any network that has attention taps (ARL blocks, grid
attention gates) so that ``forward(x)`` returns ``(logits, map_1, ..., map_k)``; its
:attr:`~AttentionOutputs.output_names` name them for ONNX. See ``docs/deploy.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .recorder import attention_taps, record_attention

__all__ = ["AttentionOutputs"]


class AttentionOutputs(nn.Module):
    """``forward(x) -> (logits, *maps)``: the wrapped network's output and its attention maps.

    The maps are those :func:`attnblocks.record_attention` records (ARL masks ``(N, C, h, w)``, gate
    maps ``(N, 1, h, w)``), in the order of :attr:`owners`, not detached. The wrapper adds no
    parameter: its ``state_dict`` is the network's under the prefix ``model.``.

    Args:
        model: a network with attention taps (an :class:`~attnblocks.ARLWrapper`, an
            :class:`~attnblocks.AttentionGatedNet`, ...) whose ``forward`` returns logits.
        include: the owners to output (names as :func:`attnblocks.attention_taps` gives them, e.g.
            ``["layer4.1"]``); default every tap, in module order.

    Raises:
        TypeError: ``model`` is not a module or ``include`` not a list of names.
        ValueError: ``model`` has no attention tap, or ``include`` is empty or names an unknown
            owner.
    """

    def __init__(self, model: nn.Module, include: Sequence[str] | str | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"AttentionOutputs: model must be an nn.Module, got {type(model)}")
        taps = attention_taps(model)
        if not taps:
            raise ValueError(
                f"AttentionOutputs: {type(model).__name__} has no attention tap; convert it first "
                "(attnblocks.ARLWrapper) or use a gated network"
            )
        if include is None:
            owners = list(taps)
        else:
            if isinstance(include, str):
                include = [include]
            if not isinstance(include, Sequence) or not all(isinstance(o, str) for o in include):
                raise TypeError(
                    f"AttentionOutputs: include must be a list of names, got {include!r}"
                )
            owners = list(include)
            if not owners:
                raise ValueError("AttentionOutputs: include=[] outputs no map; pass None for all")
            unknown = sorted(set(owners) - set(taps))
            if unknown:
                raise ValueError(
                    f"AttentionOutputs: unknown attention owners {unknown}; known: {list(taps)}"
                )
        self.model = model
        self.owners: list[str] = owners

    @property
    def output_names(self) -> list[str]:
        """``["logits", "attention.<owner>", ...]``: names for ``torch.onnx.export``."""
        return ["logits", *(f"attention.{owner}" for owner in self.owners)]

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        with record_attention(self.model, detach=False, include=self.owners) as maps:
            logits = self.model(x)
        missing = [owner for owner in self.owners if owner not in maps]
        if missing:
            raise ValueError(
                f"AttentionOutputs: the forward pass produced no map at {missing} (a tap that this "
                "input does not reach)"
            )
        if isinstance(logits, tuple | list):  # a network returning (logits, ...): keep the logits
            logits = logits[0]
        return (logits, *(maps[owner] for owner in self.owners))
