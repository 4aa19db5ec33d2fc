"""Activation memory of a training step: the bytes of the tensors autograd saves for backward.

:class:`SavedTensorMeter` counts them through ``torch.autograd.graph.saved_tensors_hooks``,
deduplicated by storage so that a tensor saved by two ops (a ReLU output that the next convolution
also saves) counts once. Parameters and buffers can be excluded, so that the figure is the
activation memory of a training step. Deterministic: the same on every machine.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["SavedTensorMeter", "saved_tensor_bytes"]


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


class SavedTensorMeter:
    """Count the bytes autograd saves for backward while the context is open.

    Deduplicated by storage: a tensor saved by several ops (or several views of one storage) counts
    once, with the size of its whole storage, which is what stays alive until backward. Storages of
    ``exclude`` (typically the model's parameters and buffers) are not counted.

    Example:
        >>> x = torch.randn(4, 8, requires_grad=True)
        >>> with SavedTensorMeter() as meter:
        ...     y = torch.relu(x * 2).sum()   # mul saves nothing (scalar), relu saves its output
        >>> meter.bytes
        128
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._exclude = {_storage_key(t) for t in exclude}
        self._seen: dict[tuple[str, int], int] = {}
        self._alive: list[torch.Tensor] = []  # keeps storages alive: no address reuse while open
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None
        self.calls = 0

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        key = _storage_key(t)
        if key not in self._exclude and key not in self._seen:
            self._seen[key] = t.untyped_storage().nbytes()
            self._alive.append(t)
        return t

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def bytes(self) -> int:
        """Total bytes of the distinct saved storages."""
        return sum(self._seen.values())

    @property
    def count(self) -> int:
        """Number of distinct saved storages."""
        return len(self._seen)

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hooks is not None:
            self._hooks.__exit__(*exc)
        self._hooks = None
        self._alive.clear()


def saved_tensor_bytes(
    model: torch.nn.Module, inputs: torch.Tensor, *, exclude_params: bool = True
) -> int:
    """Bytes of activations saved by one forward of ``model(inputs)`` (see :class:`SavedTensorMeter`).

    Runs the forward with gradients enabled, counts, then frees the graph without a backward.
    """
    exclude = list(model.parameters()) + list(model.buffers()) if exclude_params else []
    with SavedTensorMeter(exclude=exclude) as meter:
        out = model(inputs)
    del out
    return meter.bytes
