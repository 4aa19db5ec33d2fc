"""Attention-gated classifiers on any timm backbone: AttnMel-CNN and its generalisations.

``AttentionGatedNet`` takes the feature stages of a backbone, puts a :class:`GridAttentionGate` on
the chosen stages, all guided by the last stage as a spatial map, and classifies with one Linear
over ``concat[GAP(last stage), attended vectors]`` (Yan, Kawahara, Hamarneh, IPMI 2019).

Stages are timm's ``feature_info`` stages (``forward_intermediates`` indices), except for VGG: there
a stage is the *max-pooled* output of a conv block (pool-1 .. pool-5, strides 2 .. 32), as AttnMel
uses them, where timm's ``features_only`` VGG returns the maps before each pool.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import timm
import torch
from timm.models import is_model_in_modules
from torch import Tensor, nn

from ._tracing import is_symbolic_tracing
from .backbones import is_features_only, load_backbone_weights, num_stages, stage_features
from .checkpoint import LoadReport
from .grid import GridAttentionGate

__all__ = ["AttentionGatedNet", "attnmel_vgg16", "list_gated_heads"]


class _GapBranch(nn.Module):
    """Mel-CNN ablation branch: plain global average pooling of a stage, no map."""

    def forward(self, local: Tensor, global_: Tensor) -> tuple[Tensor, None]:
        return local.mean(dim=(2, 3)), None


def _gate_branch(channels: int, gate_channels: int, **kw: Any) -> nn.Module:
    return GridAttentionGate(channels, gate_channels, **kw)


def _gap_branch(channels: int, gate_channels: int, **kw: Any) -> nn.Module:
    return _GapBranch()


# head name -> (branch factory per gated stage, whether the stages are used at all)
_HEADS: dict[str, tuple[Callable[..., nn.Module], bool]] = {
    "attention": (_gate_branch, True),  # AttnMel-CNN
    "gap_concat": (_gap_branch, True),  # Mel-CNN: same features, no attention
    "gap": (_gap_branch, False),  # VGG-16-GAP: GAP of the last stage only
}


def list_gated_heads() -> list[str]:
    """Names accepted by ``AttentionGatedNet(head=...)``, sorted."""
    return sorted(_HEADS)


class AttentionGatedNet(nn.Module):
    """Grid attention gates on chosen stages of any timm backbone, guided by the last stage.

    Args:
        backbone: a timm model name (``"vgg16_bn"``, ``"resnet50"``, ``"efficientnet_lite0"``, ...),
            a full timm model (its stages are taken with ``forward_intermediates``), or a timm
            ``features_only`` model (its outputs are the stages).
        gate_stages: stage indices that get a gate, each before ``global_stage``. Default
            ``(2, 3)``:
            strides 8 and 16 on timm ResNets/EfficientNets, pool-3 and pool-4 on VGG.
        num_classes: classifier outputs. Default 2.
        head: ``"attention"`` (default; AttnMel), ``"gap_concat"`` (the same stages average-pooled,
            no attention: the paper's Mel-CNN) or ``"gap"`` (GAP of the global stage only).
        global_stage: the gating stage. Default -1 (the last).
        inter_channels, normalization, aggregation: see :class:`GridAttentionGate`.
        drop_rate: dropout before the classifier. Default 0.
        pretrained: load timm's pretrained weights for ``backbone`` (needs network access).
        weights: a local checkpoint for the backbone instead: timm/torchvision layout, or
            EfficientNet-PyTorch layout (converted); ``.pth``/``.pt``/``.bin``/``.safetensors``.
            The report (loaded, missing, unexpected keys) is kept as ``self.load_report``.
        backbone_kwargs: more ``timm.create_model`` arguments (``in_chans``, ``drop_path_rate``).
        device, dtype: for all parameters.

    ``forward(x)`` returns logits ``(N, num_classes)``; ``forward_with_attention(x)`` returns
    ``(logits, maps)`` with one ``(N, 1, H_i, W_i)`` map per gate (none for the baselines).
    """

    def __init__(
        self,
        backbone: str | nn.Module,
        gate_stages: Sequence[int] = (2, 3),
        num_classes: int = 2,
        *,
        head: str = "attention",
        global_stage: int = -1,
        inter_channels: int = 256,
        normalization: str = "sigmoid",
        aggregation: str | None = None,
        drop_rate: float = 0.0,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if head not in _HEADS:
            raise ValueError(
                f"AttentionGatedNet: unknown head {head!r}; expected one of {list_gated_heads()}"
            )
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"AttentionGatedNet: num_classes must be an int >= 1, got {num_classes!r}"
            )
        if pretrained and weights is not None:
            raise ValueError(
                "AttentionGatedNet: pass either weights=PATH or pretrained=True, not both"
            )
        dd = {"device": device, "dtype": dtype}
        if isinstance(backbone, str):
            kwargs = dict(backbone_kwargs or {})
            if not pretrained and is_model_in_modules(backbone.split(".")[0], ["vgg"]):
                # the VGG head (120M parameters) is discarded: build it 1-wide instead of 4096-wide
                kwargs.setdefault("mlp_ratio", 1 / 4096)
            model = timm.create_model(backbone, pretrained=pretrained, **kwargs, **dd)
        elif isinstance(backbone, nn.Module):
            if pretrained or backbone_kwargs:
                raise ValueError(
                    "AttentionGatedNet: pretrained/backbone_kwargs apply to a backbone given by "
                    f"name; got a {type(backbone).__name__} module"
                )
            model = backbone.to(**dd) if device is not None or dtype is not None else backbone
        else:
            raise TypeError(
                f"AttentionGatedNet: backbone must be a timm model name or an nn.Module, "
                f"got {type(backbone).__name__}"
            )
        features_only = is_features_only(model)
        n_stages = num_stages(model)
        g_idx = global_stage + n_stages if global_stage < 0 else global_stage
        if not 0 <= g_idx < n_stages:
            raise ValueError(
                f"AttentionGatedNet: global_stage {global_stage} out of range for {n_stages} stages"
            )
        _, use_stages = _HEADS[head]
        stages = sorted({int(s) + n_stages if s < 0 else int(s) for s in gate_stages})
        if use_stages and (not stages or any(not 0 <= s < g_idx for s in stages)):
            raise ValueError(
                f"AttentionGatedNet: gate_stages must be non-empty stage indices in [0, {g_idx}) "
                f"(before the global stage {g_idx} of {n_stages}), got {tuple(gate_stages)}"
            )
        self.gate_stages = tuple(stages) if use_stages else ()
        self.global_stage = g_idx
        out_indices = [*self.gate_stages, g_idx]
        if features_only:
            self.backbone = model
            all_channels = list(model.feature_info.channels())
            self._positions = out_indices
            channels = [all_channels[i] for i in out_indices]
        else:
            self.backbone, channels = stage_features(model, out_indices)
            self._positions = list(range(len(out_indices)))
        self.pretrained_cfg = getattr(model, "pretrained_cfg", {})
        self.load_report: LoadReport | None = None
        if weights is not None:
            self.load_report = self.load_backbone_weights(weights)

        factory, _ = _HEADS[head]
        kw = {
            "inter_channels": inter_channels,
            "normalization": normalization,
            "aggregation": aggregation,
            **dd,
        }
        self.head_type = head
        self.branches = nn.ModuleList(factory(c, channels[-1], **kw) for c in channels[:-1])
        self.stage_channels = tuple(channels)
        self.num_features = sum(channels)
        self.num_classes = num_classes
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(self.num_features, num_classes, **dd)
        nn.init.kaiming_normal_(self.classifier.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.classifier.bias)

    @property
    def gates(self) -> list[GridAttentionGate]:
        """The attention gates, in stage order (empty for the baseline heads)."""
        return [b for b in self.branches if isinstance(b, GridAttentionGate)]

    def load_backbone_weights(self, path: str | os.PathLike, *, strict: bool = True) -> LoadReport:
        """Load a backbone checkpoint (see ``weights``) into the backbone and return the report.

        Keys of the removed classifier head are reported as unexpected; with ``strict`` a backbone
        key missing from the checkpoint raises ``ValueError``.
        """
        target = getattr(self.backbone, "model", self.backbone)
        return load_backbone_weights(target, path, strict=strict)

    def forward_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(features (N, num_features), maps)``: the classifier's input and the gates' maps."""
        if not is_symbolic_tracing() and (not isinstance(x, Tensor) or x.dim() != 4):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"AttentionGatedNet: input must be (N, C, H, W), got {shape}")
        feats = self.backbone(x)
        g = feats[self._positions[-1]]
        vectors = [g.mean(dim=(2, 3))]
        maps = []
        for pos, branch in zip(self._positions[:-1], self.branches, strict=True):
            vector, attn = branch(feats[pos], g)
            vectors.append(vector)
            if attn is not None:
                maps.append(attn)
        return torch.cat(vectors, dim=1), maps

    def forward_with_attention(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(logits (N, num_classes), [attention map (N, 1, H_i, W_i) per gate])``."""
        features, maps = self.forward_features(x)
        return self.classifier(self.drop(features)), maps

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_attention(x)[0]


def attnmel_vgg16(
    num_classes: int = 2,
    *,
    head: str = "attention",
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    normalization: str = "sigmoid",
    **kwargs: Any,
) -> AttentionGatedNet:
    """AttnMel-CNN (Yan et al., IPMI 2019) as published: VGG-16-BN with gates on pool-3 and pool-4.

    Gates on pool-3 (256 ch, stride 8) and pool-4 (512 ch, stride 16), both guided by pool-5
    (512 ch, stride 32); classifier = one Linear over
    ``concat[GAP(pool-5), attended-3, attended-4]`` (1280 features). ``head="gap_concat"`` gives the
    paper's Mel-CNN ablation (the same 1280 features without attention) and ``head="gap"`` the
    VGG-16-GAP baseline (512 features).

    Args:
        num_classes: classifier outputs. Default 2.
        head, normalization: see :class:`AttentionGatedNet`.
        pretrained: timm's ImageNet ``vgg16_bn`` weights (needs network access).
        weights: a local VGG-16-BN checkpoint instead (timm or torchvision layout).
        **kwargs: more :class:`AttentionGatedNet` arguments (``drop_rate``, ``device``, ...).
    """
    return AttentionGatedNet(
        "vgg16_bn",
        gate_stages=(2, 3),
        num_classes=num_classes,
        head=head,
        pretrained=pretrained,
        weights=weights,
        normalization=normalization,
        **kwargs,
    )
