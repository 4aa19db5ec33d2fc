"""Attention-gated classifiers on any timm backbone: AttnMel-CNN and its generalisations.

``AttentionGatedNet`` takes the feature stages of a backbone, puts a :class:`GridAttentionGate` on
the chosen stages, all guided by the last stage as a spatial map, and classifies with one Linear
over ``concat[GAP(last stage), attended vectors]`` (Yan, Kawahara, Hamarneh, IPMI 2019).

Stages are timm's ``feature_info`` stages (``forward_intermediates`` indices), except for VGG: there
a stage is the *max-pooled* output of a conv block (pool-1 .. pool-5, strides 2 .. 32), as AttnMel
uses them, where timm's ``features_only`` VGG returns the maps before each pool.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import timm
import torch
from timm.layers import SelectAdaptivePool2d
from timm.models import generate_default_cfgs, is_model_in_modules, register_model
from timm.models._builder import pretrained_cfg_for_features
from timm.models._features import FeatureGetterNet, feature_take_indices
from torch import Tensor, nn

from ._tracing import is_symbolic_tracing
from .backbones import (
    PooledVGGFeatures,
    is_features_only,
    load_backbone_weights,
    num_stages,
    stage_features,
)
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


_POOLS = ("avg", "max", "avgmax", "catavgmax", "")


def _make_pool(global_pool: str) -> SelectAdaptivePool2d:
    if global_pool not in _POOLS:
        raise ValueError(
            f"AttentionGatedNet: global_pool must be one of {list(_POOLS)}, got {global_pool!r}"
        )
    # the 'fast' variants pool with x.mean / x.amax over (H, W)
    return SelectAdaptivePool2d(
        pool_type=f"fast{global_pool}" if global_pool else "", flatten=bool(global_pool)
    )


class AttentionGatedNet(nn.Module):
    """Grid attention gates on chosen stages of any timm backbone, guided by the last stage.

    Args:
        backbone: a timm model name (``"vgg16_bn"``, ``"resnet50"``, ``"efficientnet_lite0"``, ...),
            a full timm model (its stages are taken with ``forward_intermediates``), or a timm
            ``features_only`` model (its outputs are the stages).
        gate_stages: stage indices that get a gate, each before ``global_stage``. Default
            ``(2, 3)``:
            strides 8 and 16 on timm ResNets/EfficientNets, pool-3 and pool-4 on VGG.
        num_classes: classifier outputs. Default 2; 0 gives no classifier (``forward`` returns the
            pooled features, as in timm).
        head: ``"attention"`` (default; AttnMel), ``"gap_concat"`` (the same stages average-pooled,
            no attention: the paper's Mel-CNN) or ``"gap"`` (GAP of the global stage only).
        global_stage: the gating stage. Default -1 (the last).
        inter_channels, normalization, aggregation: see :class:`GridAttentionGate`.
        drop_rate: dropout before the classifier. Default 0.
        global_pool: pooling of the feature map before the classifier: ``"avg"`` (default, the
            paper's), ``"max"``, ``"avgmax"``, ``"catavgmax"`` or ``""`` (none; only with
            ``num_classes=0``).
        pretrained: load timm's pretrained weights for ``backbone`` (needs network access).
        weights: a local checkpoint for the backbone instead: timm/torchvision layout, or
            EfficientNet-PyTorch layout (converted); ``.pth``/``.pt``/``.bin``/``.safetensors``.
            The report (loaded, missing, unexpected keys) is kept as ``self.load_report``.
        backbone_kwargs: more ``timm.create_model`` arguments (``in_chans``, ``drop_path_rate``).
        device, dtype: for all parameters.

    ``forward(x)`` returns logits ``(N, num_classes)``; ``forward_with_attention(x)`` returns
    ``(logits, maps)`` with one ``(N, 1, H_i, W_i)`` map per gate (none for the baselines).

    timm's model API: ``forward_features(x)`` is the unpooled ``(N, num_features, h, w)`` map at
    the global stage's resolution: the global stage's channels, then each gated stage's attended
    vector broadcast over the ``h x w`` positions, so that its global average pool is exactly the
    classifier's input; ``forward_head(features, pre_logits=False)`` pools it and classifies.
    ``forward_intermediates``, ``feature_info`` (the backbone's stages up to ``global_stage``, with
    module names inside this network), ``get_classifier``, ``reset_classifier``,
    ``set_grad_checkpointing``, ``group_matcher`` and ``pretrained_cfg``/``default_cfg`` work as
    in timm. ``cam_layer`` is the module whose output is the global stage's map, the default
    Grad-CAM target layer.
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
        global_pool: str = "avg",
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
        _check_num_classes(num_classes, global_pool)
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
        source_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        self.min_input_size: int | None = None
        self._features_only = features_only
        if features_only:
            self.backbone = model
            all_channels = list(model.feature_info.channels())
            self._positions = out_indices
            channels = [all_channels[i] for i in out_indices]
            info = [dict(d) for d in model.feature_info.get_dicts()[: g_idx + 1]]
            for d in info:
                d["module"] = self._module_name(model, "backbone.", str(d.get("module", "")))
        else:
            self.backbone, channels = stage_features(model, out_indices)
            self._positions = list(range(len(out_indices)))
            if isinstance(self.backbone, PooledVGGFeatures):
                info = [
                    {"num_chs": c, "reduction": 2 ** (i + 1), "module": f"backbone.{m}"}
                    for i, (c, m) in enumerate(
                        zip(self.backbone.stage_channels, self.backbone.stage_modules, strict=True)
                    )
                ]
                self.min_input_size = self.backbone.min_input_size
            else:
                info = [dict(d) for d in model.feature_info[: g_idx + 1]]
                for d in info:
                    d["module"] = self._module_name(model, "backbone.model.", str(d["module"]))
        # stages the forward pass takes from the list of all stages (forward_intermediates)
        self._stage_positions = out_indices
        self.feature_info = info
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
        self.global_pool = _make_pool(global_pool)
        self.drop = nn.Dropout(drop_rate)
        self.classifier = self._new_classifier(num_classes, **dd)
        self.pretrained_cfg = self._make_cfg(source_cfg, info[g_idx]["reduction"])
        self.default_cfg = self.pretrained_cfg

    # --- construction helpers -------------------------------------------------------------------

    @staticmethod
    def _module_name(model: nn.Module, prefix: str, name: str) -> str:
        """``name`` as a submodule of this network (features_only models flatten ``a.b`` to
        ``a_b``)."""
        modules = dict(model.named_modules())
        for candidate in (name, name.replace(".", "_")):
            if candidate and candidate in modules:
                return prefix + candidate
        return prefix + name

    def _new_classifier(
        self,
        num_classes: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        in_features = self.num_features * self.global_pool.feat_mult()
        fc = nn.Linear(in_features, num_classes, device=device, dtype=dtype)
        nn.init.kaiming_normal_(fc.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(fc.bias)
        return fc

    def _make_cfg(self, source: dict[str, Any], reduction: int) -> dict[str, Any]:
        """The backbone's ``pretrained_cfg`` (preprocessing) with the keys that describe this
        network's own layers: ``first_conv``, ``classifier``, ``num_classes``, ``pool_size``."""
        cfg = dict(source)
        names = dict(self.named_modules())
        params = {n for n, _ in self.named_parameters()}
        first = cfg.get("first_conv")
        firsts = [first] if isinstance(first, str) else list(first or [])
        if self._features_only:
            mapped = [self._module_name(self.backbone, "backbone.", f) for f in firsts]
        else:
            mapped = [f"backbone.model.{f}" for f in firsts]
        if not mapped or any(f"{m}.weight" not in params for m in mapped):
            convs = [n for n, m in names.items() if isinstance(m, nn.Conv2d)]
            mapped = convs[:1]
        cfg["first_conv"] = mapped[0] if len(mapped) == 1 else tuple(mapped)
        cfg["classifier"] = "classifier"
        cfg["num_classes"] = self.num_classes
        size = cfg.get("input_size", (3, 224, 224))
        if self.min_input_size is not None:  # unpadded max-pools: floor
            cfg["pool_size"] = tuple(s // reduction for s in size[-2:])
            cfg["min_input_size"] = (size[0], self.min_input_size, self.min_input_size)
        else:
            cfg["pool_size"] = tuple(-(-s // reduction) for s in size[-2:])
        return cfg

    def _backbone_module(self) -> nn.Module:
        """The timm model (or ``features_only`` model) inside ``self.backbone``."""
        return self.backbone if self._features_only else self.backbone.model

    # --- timm model API -------------------------------------------------------------------------

    @property
    def gates(self) -> list[GridAttentionGate]:
        """The attention gates, in stage order (empty for the baseline heads)."""
        return [b for b in self.branches if isinstance(b, GridAttentionGate)]

    @property
    def head_hidden_size(self) -> int:
        """Width of ``forward_head(..., pre_logits=True)`` (the classifier's input)."""
        return self.num_features * self.global_pool.feat_mult()

    @property
    def cam_layer(self) -> nn.Module:
        """The module whose output is the global stage's map (``feature_info[-1]["module"]``):
        the default target layer of ``ab.grad_cam``, and one to give pytorch-grad-cam."""
        return self.get_submodule(self.feature_info[-1]["module"])

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier with ``num_classes`` outputs (0: none; ``forward`` then returns the
        pooled features), and optionally another ``global_pool`` (``""``: no pooling, only with
        ``num_classes=0``; ``forward`` then returns ``forward_features``' map)."""
        pool = (
            self.global_pool.pool_type.removeprefix("fast") if global_pool is None else global_pool
        )
        _check_num_classes(num_classes, pool)
        if global_pool is not None:
            self.global_pool = _make_pool(global_pool)
        ref = next(self.parameters())
        self.num_classes = num_classes
        self.classifier = self._new_classifier(num_classes, device=ref.device, dtype=ref.dtype)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the backbone's stages in the backward pass instead of storing them."""
        target = self._backbone_module()
        if isinstance(self.backbone, PooledVGGFeatures):
            target = self.backbone
        if not hasattr(target, "set_grad_checkpointing"):
            raise TypeError(
                f"AttentionGatedNet: the {type(target).__name__} backbone has no "
                "set_grad_checkpointing"
            )
        target.set_grad_checkpointing(enable)

    def group_matcher(self, coarse: bool = False) -> Callable[[str], tuple[float, ...]]:
        """Parameter groups for layer-wise learning rates (``timm.optim``): the backbone's own
        groups in order, then the gates and the classifier together as the last group."""
        target = self._backbone_module()
        prefix = "backbone." if self._features_only else "backbone.model."
        inner = getattr(target, "group_matcher", None)
        if callable(inner):
            groups = inner(coarse=coarse)
        else:  # a features_only backbone: one group per top-level child, in order
            groups = {
                str(i): rf"^{re.escape(n)}\." for i, (n, _) in enumerate(target.named_children())
            }
        rules = []
        for ordinal, spec in enumerate(groups.values()):
            if spec is None:
                continue
            for pattern, suffix in spec if isinstance(spec, (list, tuple)) else [(spec, None)]:
                rules.append((re.compile(pattern), ordinal, suffix))

        def match(name: str) -> tuple[float, ...]:
            if name.startswith(prefix):
                rest = name[len(prefix) :]
                for regex, ordinal, suffix in rules:
                    m = regex.match(rest)
                    if m:
                        parts = [ordinal, *(g for g in m.groups() if g is not None)]
                        return tuple(float(p) for p in [*parts, *(suffix or ())])
            return (math.inf,)

        return match

    # --- forward --------------------------------------------------------------------------------

    def _check_input(self, x: Tensor) -> None:
        if is_symbolic_tracing() or torch.jit.is_tracing():  # fx proxies / traced sizes
            return
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"AttentionGatedNet: input must be (N, C, H, W), got {shape}")
        m = self.min_input_size
        if m is not None and min(x.shape[-2:]) < m:
            raise ValueError(
                f"AttentionGatedNet: input {tuple(x.shape[-2:])} is too small for the backbone: "
                f"its {m.bit_length() - 1} stride-2 max-pools up to the global stage need at "
                f"least {m}x{m} pixels"
            )

    def _all_stages(self, x: Tensor, norm: bool = False) -> list[Tensor]:
        """Every stage of ``feature_info``, in order (``norm``: see timm's
        ``forward_intermediates``; VGG and ``features_only`` backbones have no final norm)."""
        if self._features_only:
            return list(self.backbone(x))
        if isinstance(self.backbone, PooledVGGFeatures):
            return self.backbone.forward_stages(x)
        return self.backbone.model.forward_intermediates(
            x, indices=list(range(self.global_stage + 1)), norm=norm, intermediates_only=True
        )

    def _head_map(self, feats: Sequence[Tensor], positions: Sequence[int]) -> tuple[Tensor, list]:
        g = feats[positions[-1]]
        planes = [g]
        maps = []
        for pos, branch in zip(positions[:-1], self.branches, strict=True):
            vector, attn = branch(feats[pos], g)
            planes.append(vector[:, :, None, None].expand(-1, -1, g.shape[2], g.shape[3]))
            if attn is not None:
                maps.append(attn)
        return (torch.cat(planes, dim=1) if len(planes) > 1 else g), maps

    def _features_and_maps(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        self._check_input(x)
        return self._head_map(self.backbone(x), self._positions)

    def forward_features(self, x: Tensor) -> Tensor:
        """The unpooled ``(N, num_features, h, w)`` map: the global stage, then each gated stage's
        attended vector broadcast over the positions (its spatial mean is the classifier input)."""
        return self._features_and_maps(x)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool ``forward_features``' map, drop out and classify (``pre_logits``: skip the last)."""
        x = self.drop(self.global_pool(x))
        return x if pre_logits else self.classifier(x)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The stages ``indices`` of ``feature_info`` (an int ``n``: the last ``n``; ``None``: all)
        and, unless ``intermediates_only``, ``forward_features``' map, as in timm. All stages up to
        the global one are computed (``stop_early`` changes nothing: the head needs them)."""
        if output_fmt != "NCHW":
            raise ValueError(f"AttentionGatedNet: output_fmt must be 'NCHW', got {output_fmt!r}")
        self._check_input(x)
        take, _ = feature_take_indices(len(self.feature_info), indices)
        stages = self._all_stages(x, norm)
        intermediates = [stages[i] for i in take]
        if intermediates_only:
            return intermediates
        return self._head_map(stages, self._stage_positions)[0], intermediates

    def forward_with_attention(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(logits (N, num_classes), [attention map (N, 1, H_i, W_i) per gate])``."""
        features, maps = self._features_and_maps(x)
        return self.forward_head(features), maps

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_attention(x)[0]

    # --- weights --------------------------------------------------------------------------------

    def load_backbone_weights(self, path: str | os.PathLike, *, strict: bool = True) -> LoadReport:
        """Load a backbone checkpoint (see ``weights``) into the backbone and return the report.

        Keys of the removed classifier head are reported as unexpected; with ``strict`` a backbone
        key missing from the checkpoint raises ``ValueError``.
        """
        target = getattr(self.backbone, "model", self.backbone)
        return load_backbone_weights(target, path, strict=strict)


def _check_num_classes(num_classes: int, global_pool: str) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"AttentionGatedNet: num_classes must be an int >= 0, got {num_classes!r}")
    if global_pool == "" and num_classes:
        raise ValueError(
            "AttentionGatedNet: global_pool='' (no pooling) needs num_classes=0, got "
            f"num_classes={num_classes}"
        )


# read by timm's register_model: timm.create_model("attnmel_vgg16") once attnblocks is imported
default_cfgs = generate_default_cfgs(
    {
        "attnmel_vgg16": {
            **timm.models.get_pretrained_cfg("vgg16_bn").to_dict(),
            "architecture": "attnmel_vgg16",
            "url": "",
            "hf_hub_id": None,
            "tag": None,
            "num_classes": 2,
            "first_conv": "backbone.model.features.0",
            "classifier": "classifier",
            "pool_size": (7, 7),
            "min_input_size": (3, 32, 32),
        }
    }
)


@register_model
def attnmel_vgg16(
    num_classes: int = 2,
    *,
    head: str = "attention",
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    normalization: str = "sigmoid",
    pretrained_cfg: dict[str, Any] | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    feature_cls: str | None = None,
    **kwargs: Any,
) -> AttentionGatedNet:
    """AttnMel-CNN (Yan et al., IPMI 2019) as published: VGG-16-BN with gates on pool-3 and pool-4.

    Gates on pool-3 (256 ch, stride 8) and pool-4 (512 ch, stride 16), both guided by pool-5
    (512 ch, stride 32); classifier = one Linear over
    ``concat[GAP(pool-5), attended-3, attended-4]`` (1280 features). ``head="gap_concat"`` gives the
    paper's Mel-CNN ablation (the same 1280 features without attention) and ``head="gap"`` the
    VGG-16-GAP baseline (512 features). ``timm.create_model("attnmel_vgg16", ...)`` builds the
    same network once ``attnblocks`` is imported.

    Args:
        num_classes: classifier outputs. Default 2 (0: none, as in timm).
        head, normalization: see :class:`AttentionGatedNet`.
        pretrained: timm's ImageNet ``vgg16_bn`` weights (needs network access).
        weights: a local VGG-16-BN checkpoint instead (timm or torchvision layout).
        pretrained_cfg, pretrained_cfg_overlay: replace / update ``pretrained_cfg`` (timm's).
        cache_dir: download folder of ``pretrained`` weights (timm's).
        features_only: return timm's ``FeatureGetterNet`` over ``forward_intermediates``: the
            stages ``out_indices`` (default all: pool-1 ... pool-5) as a list. ``feature_cls``
            may only be ``None`` or ``"getter"``.
        **kwargs: more :class:`AttentionGatedNet` arguments (``drop_rate``, ``global_pool``,
            ``device``, ...).
    """
    if features_only and feature_cls not in (None, "getter"):
        raise ValueError(
            f"attnmel_vgg16: features_only supports feature_cls='getter' only, got {feature_cls!r}"
        )
    if cache_dir is not None:
        kwargs["backbone_kwargs"] = {**kwargs.get("backbone_kwargs", {}), "cache_dir": cache_dir}
    net = AttentionGatedNet(
        "vgg16_bn",
        gate_stages=(2, 3),
        num_classes=num_classes,
        head=head,
        pretrained=pretrained,
        weights=weights,
        normalization=normalization,
        **kwargs,
    )
    cfg = dict(pretrained_cfg) if pretrained_cfg is not None else {**net.pretrained_cfg}
    cfg.update({"architecture": "attnmel_vgg16", **(pretrained_cfg_overlay or {})})
    net.pretrained_cfg = net.default_cfg = cfg
    if not features_only:
        return net
    indices = list(range(len(net.feature_info))) if out_indices is None else list(out_indices)
    feats = FeatureGetterNet(net, out_indices=indices)
    feats.pretrained_cfg = feats.default_cfg = pretrained_cfg_for_features(cfg)
    return feats
