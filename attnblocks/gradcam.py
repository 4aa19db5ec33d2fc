"""Differentiable Grad-CAM: the class attention map that CARE trains.

For a target layer with output ``A`` of shape ``(N, K, h, w)`` and the logit ``y_c`` of the target
class ``c`` of each image (Selvaraju et al., ICCV 2017)::

    w_k   = mean_{i,j} d y_c / d A_k[i, j]          (channel weights, one per image)
    cam   = sum_k w_k * A_k                          (no ReLU, as in CARE)
    cam   = upsample(cam, input size)                (bilinear, align_corners=False)
    cam   = (cam - min cam) / (max cam - min cam)    (min-max per image, in [0, 1]: minmax_maps)

The channel weights come from :func:`torch.autograd.grad`, which returns the gradient instead of
accumulating it, so that computing the map leaves every parameter's ``.grad`` untouched (the CARE
reference code calls ``backward`` here and leaks that gradient into the optimiser step). By default
the weights are detached: the map stays differentiable through ``A`` only, which is what a loss on the
map needs; ``detach_weights=False`` keeps the second-order path through ``w_k`` as well.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor, nn

from .cam import minmax_maps

__all__ = [
    "GradCAMOutput",
    "capture_activation",
    "default_target_layer",
    "grad_cam",
    "grad_cam_from_activation",
    "minmax_normalize",
    "resolve_layer",
]

_MAX_LISTED = 40


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Return ``(name, module)`` for a submodule of ``model`` given by its qualified name or itself.

    Raises:
        ValueError: if the name is not a submodule of ``model`` (the message lists the candidates:
            all submodule names for a small model, the closest names and the top-level children
            otherwise), or the module given is not part of ``model``.
        TypeError: if ``layer`` is neither a string nor an ``nn.Module``.
    """
    names = {module: name for name, module in model.named_modules()}
    if isinstance(layer, nn.Module):
        if layer not in names:
            raise ValueError(f"target layer {type(layer).__name__} is not a submodule of the model")
        return names[layer], layer
    if not isinstance(layer, str):
        raise TypeError(f"target layer must be a module name or an nn.Module, got {type(layer)}")
    modules = dict(model.named_modules())
    if layer in modules and layer != "":
        return layer, modules[layer]
    candidates = [n for n in modules if n]
    if len(candidates) <= _MAX_LISTED:
        listed = f"candidates: {candidates}"
    else:
        close = difflib.get_close_matches(layer, candidates, n=8, cutoff=0.5)
        top = [n for n, _ in model.named_children()]
        listed = (
            f"closest: {close}; top-level: {top} ({len(candidates)} submodules in all, "
            "see model.named_modules())"
        )
    raise ValueError(f"target layer {layer!r} not found in {type(model).__name__}; {listed}")


def default_target_layer(model: nn.Module) -> str:
    """The name of the module whose output is a timm model's last convolutional map.

    That is the last feature stage (``model.feature_info[-1]["module"]``): ``"layer4"`` for a
    ResNet (plain, ``ARLWrapper``'d, :func:`~attnblocks.arl_cnn14`), and for an
    :class:`~attnblocks.AttentionGatedNet` the module whose output is the global stage's map (its
    ``cam_layer``, e.g. ``"backbone.model.features.43"``, pool-5, for
    :func:`~attnblocks.attnmel_vgg16`). A timm EfficientNet (or MobileNetV2, MNASNet, ...) maps its
    last stage through a 1x1 convolution before pooling (``conv_head`` then ``bn2``, e.g. 320 ->
    1280 channels for B0/Lite0): its last map is ``"bn2"``, the output of ``forward_features``.

    Raises:
        ValueError: if the model carries no timm ``feature_info``; pass the layer name explicitly.
    """
    modules = dict(model.named_modules())
    if isinstance(modules.get("conv_head"), nn.Conv2d) and "bn2" in modules:
        return "bn2"  # timm's EfficientNet family: the head convolution runs before pooling
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1]
        name = str(last.get("module", "")) if isinstance(last, dict) else ""
        for candidate in (name, name.replace("_", ".")):
            if candidate and candidate in modules:
                return candidate
    raise ValueError(
        f"{type(model).__name__} has no timm feature_info to find its last stage; "
        "pass target_layer explicitly (a name from model.named_modules())"
    )


@contextmanager
def capture_activation(layer: nn.Module) -> Iterator[list[Tensor]]:
    """Keep the output of ``layer`` (in the autograd graph) while the context is open.

    Yields a list that holds the output of the last forward pass through ``layer``; the hook is
    removed on exit, so the model carries nothing afterwards. When the output is not part of a graph
    (a frozen model, ``requires_grad_(False)``) but gradients are enabled, the hook hands on a leaf
    copy that requires grad, so that Grad-CAM still works; no parameter is touched.

    Raises:
        TypeError: (during the forward pass) if the layer's output is not a single tensor of shape
            ``(N, K, h, w)``.
    """
    store: list[Tensor] = []

    def hook(module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor | None:
        if not isinstance(output, Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise TypeError(
                f"Grad-CAM target layer {type(module).__name__} must output a (N, K, h, w) tensor, "
                f"got {shape}"
            )
        store.clear()
        if torch.is_grad_enabled() and not output.requires_grad:
            output = output.detach().requires_grad_()
            store.append(output)
            return output
        store.append(output)
        return None

    handle = layer.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def minmax_normalize(cam: Tensor, eps: float = 1e-8) -> Tensor:
    """Deprecated alias of :func:`attnblocks.minmax_maps` (the same operation); warns."""
    warnings.warn(
        "attnblocks.gradcam.minmax_normalize is deprecated; use attnblocks.minmax_maps",
        DeprecationWarning,
        stacklevel=2,
    )
    return minmax_maps(cam, eps)


def grad_cam_from_activation(
    logits: Tensor,
    activation: Tensor,
    targets: Tensor,
    size: tuple[int, int] | None = None,
    *,
    detach_weights: bool = True,
    relu: bool = False,
    normalize: bool = True,
    retain_graph: bool = True,
    select: Tensor | None = None,
) -> Tensor:
    """Grad-CAM of ``targets`` from logits and a target-layer activation of the same forward pass.

    Args:
        logits: ``(N, num_classes)`` output of the forward pass that produced ``activation``.
        activation: ``(N, K, h, w)`` output of the target layer (still in the graph).
        targets: ``(N,)`` class index per image whose map is wanted.
        size: ``(H, W)`` to upsample to (bilinear, ``align_corners=False``); ``None`` keeps ``(h, w)``.
        detach_weights: detach the channel weights (default); ``False`` differentiates through them.
        relu: apply a ReLU before normalising (classic Grad-CAM; CARE uses none).
        normalize: min-max normalise each map to [0, 1] after upsampling.
        retain_graph: keep the graph so that a loss on the logits/map can still be back-propagated.
        select: ``(N,)`` bool; only these images' scores are differentiated (the maps of the others
            are all zero). Saves nothing in compute, but keeps unselected images from coupling into
            the weights through batch-statistics layers between the target layer and the logits.

    Returns:
        ``(N, 1, H, W)`` maps in float32 (float64 for a float64 activation), differentiable w.r.t.
        the activation.
    """
    if logits.dim() != 2 or logits.shape[0] != activation.shape[0]:
        raise ValueError(
            f"logits must be (N, num_classes) with N = {activation.shape[0]} (the activation's "
            f"batch), got {tuple(logits.shape)}"
        )
    targets = torch.as_tensor(targets, device=logits.device).long().view(-1)
    if targets.numel() != logits.shape[0]:
        raise ValueError(
            f"targets must hold one class per image ({logits.shape[0]}), got {targets}"
        )
    if bool(((targets < 0) | (targets >= logits.shape[1])).any()):
        raise ValueError(f"targets must lie in [0, {logits.shape[1]}), got {targets.tolist()}")
    score = logits.gather(1, targets[:, None]).flatten()
    if select is not None:
        select = torch.as_tensor(select, device=logits.device).bool().view(-1)
        if select.numel() != logits.shape[0]:
            raise ValueError(f"select must hold one flag per image ({logits.shape[0]})")
        score = score * select.to(score.dtype)
    score = score.sum()
    (grad,) = torch.autograd.grad(
        score, activation, retain_graph=retain_graph, create_graph=not detach_weights
    )
    dtype = torch.promote_types(activation.dtype, torch.float32)  # fp32 under autocast, or fp64
    weights = reduce(grad.to(dtype), "n k h w -> n k 1 1", "mean")
    cam = reduce(weights * activation.to(dtype), "n k h w -> n 1 h w", "sum")
    if relu:
        cam = F.relu(cam)
    if size is not None and tuple(cam.shape[-2:]) != tuple(size):
        cam = F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)
    return minmax_maps(cam) if normalize else cam


class GradCAMOutput(tuple):
    """``(cam, logits)`` returned by :func:`grad_cam`."""

    __slots__ = ()

    def __new__(cls, cam: Tensor, logits: Tensor) -> GradCAMOutput:
        return super().__new__(cls, (cam, logits))

    @property
    def cam(self) -> Tensor:
        return self[0]

    @property
    def logits(self) -> Tensor:
        return self[1]


def grad_cam(
    model: nn.Module,
    images: Tensor,
    target_layer: str | nn.Module | None = None,
    targets: Tensor | None = None,
    *,
    detach_weights: bool = True,
    relu: bool = False,
    normalize: bool = True,
    upsample: bool = True,
) -> GradCAMOutput:
    """Differentiable Grad-CAM of ``model`` at ``target_layer`` for one class per image.

    Runs one forward pass (in the model's current train/eval mode) and returns the maps with the
    logits of that pass, both still in the graph; no parameter's ``.grad`` is written.

    Args:
        model: a classifier returning ``(N, num_classes)`` logits.
        images: ``(N, C, H, W)`` input batch.
        target_layer: name (as in ``model.named_modules()``) or module whose output is the map's
            feature layer, e.g. ``"layer4"`` for a ResNet. ``None`` (default): the model's last
            feature stage, :func:`default_target_layer` (timm models, ``ARLWrapper`` models,
            :class:`~attnblocks.AttentionGatedNet`).
        targets: ``(N,)`` class per image; ``None`` uses the predicted class.
        detach_weights, relu, normalize: see :func:`grad_cam_from_activation`.
        upsample: upsample the map to the input size ``(H, W)`` (default).

    Returns:
        ``GradCAMOutput(cam, logits)``: ``cam`` is ``(N, 1, H, W)`` in [0, 1], float32 (float64
        for a float64 model).

    Example:
        >>> import timm, torch
        >>> m = timm.create_model("resnet18", num_classes=3)
        >>> cam, logits = grad_cam(m, torch.randn(2, 3, 64, 48), "layer4", torch.tensor([0, 2]))
        >>> cam.shape
        torch.Size([2, 1, 64, 48])
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (N, C, H, W) tensor, got {shape}")
    if target_layer is None:
        target_layer = default_target_layer(model)
    _, layer = resolve_layer(model, target_layer)
    with torch.enable_grad():
        with capture_activation(layer) as store:
            logits = model(images)
        if not store:
            raise ValueError(f"target layer {target_layer!r} was not used in the forward pass")
        if targets is None:
            targets = logits.argmax(dim=1)
        size = tuple(images.shape[-2:]) if upsample else None
        cam = grad_cam_from_activation(
            logits,
            store[0],
            targets,
            size,
            detach_weights=detach_weights,
            relu=relu,
            normalize=normalize,
        )
    return GradCAMOutput(cam, logits)
