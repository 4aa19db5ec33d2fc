"""Grid attention gate of AttnMel (Yan, Kawahara, Hamarneh, IPMI 2019; after Jetley et al. 2018).

Local features ``L`` (N, C_l, H, W) are scored against coarse global features ``G`` (N, C_g, h, w):

.. code-block:: text

    R = psi( relu( W_l * L + up(W_g * G) ) )     1x1 convs W_l, W_g -> inter_channels (no bias),
                                                  psi -> 1 channel (with bias),
                                                  up = bilinear to (H, W), align_corners=False
    A = sigmoid(R)                  ("sigmoid", the default)
    A = softmax of R over H*W       ("softmax", alias "spatial")
    attended = mean_{H,W}(A * L)    (sigmoid)   or   sum_{H,W}(A * L)   (softmax)

The gate feature is upsampled to the local feature's own size, so any input size and any ratio of
local to global resolution works (the reference code's fixed ``scale_factor`` breaks off 224x224).
The map ``A`` passes through the child ``attn_map = nn.Identity()``, where
:func:`attnblocks.record_attention`, forward hooks and feature extractors can see it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._tracing import is_symbolic_tracing
from .normalize import NormalizationFn, sigmoid_attention, spatial_softmax

__all__ = ["GridAttentionGate", "list_gate_aggregations", "list_gate_normalizations"]

# name -> (normalization of the 1-channel score map, default aggregation over space)
_GATE_NORMALIZATIONS: dict[str, tuple[NormalizationFn, str]] = {
    "sigmoid": (sigmoid_attention, "mean"),
    "softmax": (spatial_softmax, "sum"),
    "spatial": (spatial_softmax, "sum"),  # the name attnblocks.normalize uses for the same op
}


def _spatial_mean(x: Tensor) -> Tensor:
    return x.mean(dim=(2, 3))


def _spatial_sum(x: Tensor) -> Tensor:
    return x.sum(dim=(2, 3))


_AGGREGATIONS = {"mean": _spatial_mean, "sum": _spatial_sum}


def list_gate_normalizations() -> list[str]:
    """Names accepted by ``GridAttentionGate(normalization=...)``, sorted."""
    return sorted(_GATE_NORMALIZATIONS)


def list_gate_aggregations() -> list[str]:
    """Names accepted by ``GridAttentionGate(aggregation=...)``, sorted."""
    return sorted(_AGGREGATIONS)


class GridAttentionGate(nn.Module):
    """Additive grid attention gate: a spatial map over ``local`` guided by ``global_``.

    Args:
        local_channels: ``C_l``, channels of the local (fine) features.
        gate_channels: ``C_g``, channels of the global (coarse) gating features.
        inter_channels: width of the intermediate space of ``W_l`` and ``W_g``. Default 256.
        normalization: ``"sigmoid"`` (default; the map lies in (0, 1)) or ``"softmax"`` (alias
            ``"spatial"``; the map sums to 1 over H*W). Computed in float32, also under autocast.
        aggregation: ``"mean"`` or ``"sum"`` over space of ``A * L``; ``None`` (default) takes the
            paper's pairing: mean for sigmoid, sum for softmax.
        device, dtype: for the parameters.

    Shape:
        - local: ``(N, C_l, H, W)``; global_: ``(N, C_g, h, w)``, any ``h, w``.
        - Output: ``attended`` ``(N, C_l)`` and ``attn`` ``(N, 1, H, W)`` in the input dtype.

    Example:
        >>> gate = GridAttentionGate(256, 512)
        >>> attended, attn = gate(torch.randn(2, 256, 28, 28), torch.randn(2, 512, 7, 7))
        >>> attended.shape, attn.shape
        (torch.Size([2, 256]), torch.Size([2, 1, 28, 28]))
    """

    def __init__(
        self,
        local_channels: int,
        gate_channels: int,
        inter_channels: int = 256,
        normalization: str = "sigmoid",
        aggregation: str | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("local_channels", local_channels),
            ("gate_channels", gate_channels),
            ("inter_channels", inter_channels),
        ):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"GridAttentionGate: {name} must be a positive int, got {value!r}")
            if value < 1:
                raise ValueError(f"GridAttentionGate: {name} must be a positive int, got {value!r}")
        if not isinstance(normalization, str) or normalization not in _GATE_NORMALIZATIONS:
            raise ValueError(
                f"GridAttentionGate: unknown normalization {normalization!r}; "
                f"expected one of {list_gate_normalizations()}"
            )
        norm_fn, default_aggregation = _GATE_NORMALIZATIONS[normalization]
        aggregation = default_aggregation if aggregation is None else aggregation
        if not isinstance(aggregation, str) or aggregation not in _AGGREGATIONS:
            raise ValueError(
                f"GridAttentionGate: unknown aggregation {aggregation!r}; "
                f"expected one of {list_gate_aggregations()}"
            )
        dd = {"device": device, "dtype": dtype}
        self.local_channels = local_channels
        self.gate_channels = gate_channels
        self.normalization = normalization
        self.aggregation = aggregation
        self.W_l = nn.Conv2d(local_channels, inter_channels, 1, bias=False, **dd)
        self.W_g = nn.Conv2d(gate_channels, inter_channels, 1, bias=False, **dd)
        self.psi = nn.Conv2d(inter_channels, 1, 1, bias=True, **dd)
        self.attn_map = nn.Identity()
        self._normalize = norm_fn
        self._aggregate = _AGGREGATIONS[aggregation]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_in) weights and zero bias, as the AttnMel reference initialises."""
        for conv in (self.W_l, self.W_g, self.psi):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.psi.bias)

    def _check(self, local: Tensor, global_: Tensor) -> None:
        if is_symbolic_tracing() or torch.jit.is_tracing():  # fx proxies / traced sizes
            return
        for name, x, channels in (
            ("local", local, self.local_channels),
            ("global_", global_, self.gate_channels),
        ):
            if not isinstance(x, Tensor):
                raise TypeError(
                    f"GridAttentionGate: {name} must be a Tensor, got {type(x).__name__}"
                )
            if x.dim() != 4:
                raise ValueError(
                    f"GridAttentionGate: {name} must be 4D (N, C, H, W), got shape {tuple(x.shape)}"
                )
            if not x.is_floating_point():
                raise TypeError(
                    f"GridAttentionGate: {name} must be a float tensor (features), got {x.dtype}"
                )
            if x.shape[1] != channels:
                raise ValueError(
                    f"GridAttentionGate: {name} has {x.shape[1]} channels, expected {channels} "
                    f"(shape {tuple(x.shape)})"
                )
        if local.shape[0] != global_.shape[0]:
            raise ValueError(
                f"GridAttentionGate: batch sizes differ: local {tuple(local.shape)} vs "
                f"global_ {tuple(global_.shape)}"
            )

    def score(self, local: Tensor, global_: Tensor) -> Tensor:
        """The unnormalised score map ``R`` (N, 1, H, W)."""
        self._check(local, global_)
        g = F.interpolate(
            self.W_g(global_), size=local.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.psi(F.relu(self.W_l(local) + g))

    def forward(self, local: Tensor, global_: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(attended (N, C_l), attn (N, 1, H, W))``; see the class docstring."""
        attn = self.attn_map(self._normalize(self.score(local, global_)))
        return self._aggregate(attn * local), attn

    def extra_repr(self) -> str:
        return f"normalization={self.normalization!r}, aggregation={self.aggregation!r}"
