"""Differentiable Grad-CAM: hand computation, no stray gradients, errors."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import attnblocks as ab
from attnblocks.gradcam import (
    capture_activation,
    default_target_layer,
    resolve_layer,
)


class TinyNet(nn.Module):
    """conv -> relu -> 1x1 conv (the target layer) -> GAP -> linear."""

    def __init__(self, num_classes: int = 3, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, dtype=dtype)
        self.act = nn.ReLU()
        self.feat = nn.Conv2d(4, 5, 1, dtype=dtype)
        self.fc = nn.Linear(5, num_classes, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feat(self.act(self.stem(x))).mean(dim=(2, 3)))


def hand_cam(net: TinyNet, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM written out: d y_c / d A_k[i, j] = W[c, k] / (h w) for GAP + linear."""
    a = net.feat(net.act(net.stem(x)))
    h, w = a.shape[-2:]
    weights = net.fc.weight[targets] / (h * w)  # (N, K): mean over space of the constant gradient
    cam = (weights[:, :, None, None] * a).sum(1, keepdim=True)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    lo = cam.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = cam.flatten(1).max(1).values.view(-1, 1, 1, 1)
    return ((cam - lo) / (hi - lo)).detach()


def test_grad_cam_equals_hand_computation() -> None:
    net = TinyNet(dtype=torch.float64)
    x = torch.randn(3, 3, 7, 9, dtype=torch.float64)
    targets = torch.tensor([0, 2, 1])
    cam, logits = ab.grad_cam(net, x, "feat", targets)
    assert cam.shape == (3, 1, 7, 9)
    torch.testing.assert_close(cam.double(), hand_cam(net, x, targets), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, net(x))
    assert cam.amin().item() == pytest.approx(0.0, abs=1e-7)
    assert cam.amax().item() == pytest.approx(1.0, abs=1e-6)


def test_grad_cam_leaves_every_grad_none() -> None:
    net = TinyNet()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    cam, logits = ab.grad_cam(net, x, "feat", torch.tensor([1, 2]))
    assert all(p.grad is None for p in net.parameters())
    assert x.grad is None
    # the map stays differentiable through the activation: a loss on it reaches the stem ...
    cam.sum().backward()
    assert net.stem.weight.grad is not None and net.stem.weight.grad.abs().sum() > 0
    # ... but not the classifier, whose weights only enter through the detached channel weights
    assert net.fc.weight.grad is None


def test_grad_cam_does_not_touch_existing_grads() -> None:
    net = TinyNet()
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.25)
    ab.grad_cam(net, torch.randn(2, 3, 8, 8), "feat", torch.tensor([0, 1]))
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in net.parameters())


def test_undetached_weights_reach_the_classifier() -> None:
    net = TinyNet(dtype=torch.float64)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    t = torch.tensor([0, 2])
    cam, _ = ab.grad_cam(net, x, "feat", t, detach_weights=False, normalize=False, upsample=False)
    (g,) = torch.autograd.grad(cam.sum(), net.fc.weight)
    # cam = sum_k W[c,k]/(hw) * A_k, so d cam.sum() / d W[c, k] = sum_{n: t_n = c} sum_ij A_k / (hw)
    a = net.feat(net.act(net.stem(x))).detach()
    expected = torch.zeros_like(net.fc.weight)
    expected.index_add_(0, t, a.mean(dim=(2, 3)))
    torch.testing.assert_close(g, expected)


def test_gradcheck_through_activation() -> None:
    act = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64)

    def fn(a: torch.Tensor) -> torch.Tensor:
        logits = a.mean(dim=(2, 3)) @ w
        return ab.grad_cam_from_activation(logits, a, torch.tensor([1, 3]), (7, 6))

    assert torch.autograd.gradcheck(fn, (act,))


def test_predicted_class_default_and_relu() -> None:
    net = TinyNet(dtype=torch.float64)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    cam, logits = ab.grad_cam(net, x, "feat")
    torch.testing.assert_close(
        cam.double(), hand_cam(net, x, logits.argmax(1)), rtol=1e-5, atol=1e-6
    )
    raw, _ = ab.grad_cam(net, x, "feat", normalize=False, upsample=False)
    relu, _ = ab.grad_cam(net, x, "feat", normalize=False, upsample=False, relu=True)
    torch.testing.assert_close(relu, raw.clamp_min(0))


def test_select_zeroes_unselected_and_keeps_selected() -> None:
    net = TinyNet()
    x = torch.randn(3, 3, 8, 8)
    t = torch.tensor([0, 1, 2])
    full, _ = ab.grad_cam(net, x, "feat", t)
    layer = resolve_layer(net, "feat")[1]
    with capture_activation(layer) as store:
        logits = net(x)
    sel = torch.tensor([True, False, True])
    cam = ab.grad_cam_from_activation(logits, store[0], t, (8, 8), select=sel)
    torch.testing.assert_close(cam[sel], full[sel])
    assert torch.equal(cam[1], torch.zeros_like(cam[1]))


def test_eval_under_no_grad_batch_one_odd_size_channels_last() -> None:
    model = timm.create_model("resnet18", num_classes=3).eval()
    x = torch.randn(1, 3, 45, 67)
    with torch.no_grad():
        cam, _ = ab.grad_cam(model, x, "layer4", torch.tensor([2]))
    assert cam.shape == (1, 1, 45, 67) and torch.isfinite(cam).all()
    model_cl = model.to(memory_format=torch.channels_last)
    cam_cl, _ = ab.grad_cam(model_cl, x.to(memory_format=torch.channels_last), "layer4", [2])
    torch.testing.assert_close(cam_cl, cam, rtol=1e-4, atol=1e-4)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_returns_float32_close_to_fp32(dtype: torch.dtype) -> None:
    net = TinyNet()
    x = torch.randn(2, 3, 8, 8)
    ref, _ = ab.grad_cam(net, x, "feat", [0, 1])
    with torch.autocast("cpu", dtype=dtype):
        cam, _ = ab.grad_cam(net, x, "feat", [0, 1])
    assert cam.dtype == torch.float32
    assert (cam - ref).abs().max() < 0.05  # 0.015 at worst over 30 seeds (bf16)


def test_minmax_maps_flat_map_is_zero() -> None:
    cam = torch.stack([torch.full((1, 3, 3), 2.0), torch.arange(9.0).view(1, 3, 3)])
    out = ab.minmax_maps(cam)
    assert torch.equal(out[0], torch.zeros(1, 3, 3))
    torch.testing.assert_close(out[1], torch.arange(9.0).view(1, 3, 3) / 8)
    # each (n, c) map on its own; float64 stays float64, anything narrower computes in float32
    two = torch.stack([torch.arange(4.0), 10 - 2 * torch.arange(4.0)]).view(1, 2, 2, 2).double()
    expected = torch.stack([torch.arange(4.0) / 3, 1 - torch.arange(4.0) / 3]).view(1, 2, 2, 2)
    torch.testing.assert_close(ab.minmax_maps(two), expected.double())
    half = ab.minmax_maps(two.half())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, expected.float())


def test_minmax_normalize_is_a_deprecated_alias_of_minmax_maps() -> None:
    from attnblocks.gradcam import minmax_normalize

    cam = torch.randn(2, 3, 4, 5)
    with pytest.warns(
        DeprecationWarning, match=r"minmax_normalize is deprecated; use .*minmax_maps"
    ):
        out = minmax_normalize(cam, eps=1e-6)
    assert torch.equal(out, ab.minmax_maps(cam, eps=1e-6))


def test_unknown_layer_lists_candidates() -> None:
    with pytest.raises(ValueError, match=r"'nope' not found.*candidates: \['stem', 'act', 'feat'"):
        ab.grad_cam(TinyNet(), torch.randn(1, 3, 4, 4), "nope")
    big = timm.create_model("resnet18", num_classes=2)
    with pytest.raises(ValueError, match=r"closest: \['layer4'.*top-level: \['conv1'"):
        resolve_layer(big, "layer5")
    with pytest.raises(ValueError, match="not a submodule"):
        resolve_layer(big, nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="module name or an nn.Module"):
        resolve_layer(big, 3)  # type: ignore[arg-type]


def test_bad_inputs() -> None:
    net = TinyNet()
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\)"):
        ab.grad_cam(net, torch.randn(2, 3, 4, 4), "feat", torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="one class per image"):
        ab.grad_cam(net, torch.randn(2, 3, 4, 4), "feat", torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ab.grad_cam(net, torch.randn(3, 4, 4), "feat")
    with pytest.raises(TypeError, match=r"must output a \(N, K, h, w\) tensor, got \(2, 3\)"):
        ab.grad_cam(net, torch.randn(2, 3, 4, 4), "fc")
    unused = TinyNet()
    unused.spare = nn.Conv2d(3, 3, 1)  # registered, never called
    with pytest.raises(ValueError, match="not used in the forward pass"):
        ab.grad_cam(unused, torch.randn(1, 3, 4, 4), "spare")


def test_default_target_layer() -> None:
    assert default_target_layer(timm.create_model("resnet18")) == "layer4"
    lite0 = timm.create_model("efficientnet_lite0").eval()
    assert default_target_layer(lite0) == "bn2"  # after conv_head: forward_features' map
    x = torch.randn(1, 3, 64, 64)
    with ab.gradcam.capture_activation(lite0.bn2) as store:
        feats = lite0.forward_features(x)
    assert torch.equal(store[0], feats) and feats.shape[1] == 1280
    # MobileNetV3 applies its conv_head after pooling: its last map is the last stage
    assert default_target_layer(timm.create_model("mobilenetv3_small_100")) == "blocks.5"
    with pytest.raises(ValueError, match="pass target_layer explicitly"):
        default_target_layer(TinyNet())


def test_frozen_model() -> None:
    net = TinyNet(dtype=torch.float64)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([1, 0])
    ref, _ = ab.grad_cam(net, x, "feat", t)
    net.requires_grad_(False)
    cam, _ = ab.grad_cam(net, x, "feat", t)
    torch.testing.assert_close(cam, ref)
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())
