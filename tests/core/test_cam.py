"""CAM (ARL Eq. 13) and the overlay helpers: the numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnblocks as ab


def test_cam_equals_explicit_sum_of_eq13():
    features = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    weight = torch.randn(4, 5, dtype=torch.float64)
    classes = torch.tensor([0, 3, 1])
    cam = ab.class_activation_map(features, weight, classes)
    assert cam.shape == (3, 1, 4, 6) and cam.dtype == torch.float32
    for n in range(3):
        explicit = sum(weight[classes[n], k] * features[n, k] for k in range(5))
        torch.testing.assert_close(cam[n, 0], explicit.float())
    same = ab.class_activation_map(features, weight, 2)
    torch.testing.assert_close(
        same[1, 0], sum(weight[2, k] * features[1, k] for k in range(5)).float()
    )


def test_cam_mean_plus_bias_is_the_logit_of_a_gap_classifier():
    net = ab.AttentionGatedNet("resnet18", (2, 3), num_classes=3, head="gap").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        (last,) = net.backbone(x)
        logits = net(x)
    for c in range(3):
        cam = ab.class_activation_map(last, net.classifier.weight, c)
        torch.testing.assert_close(
            cam.mean(dim=(1, 2, 3)) + net.classifier.bias[c], logits[:, c], atol=1e-5, rtol=1e-5
        )


def test_cam_uses_the_gap_columns_of_a_concatenated_head():
    features = torch.randn(2, 4, 3, 3)
    weight = torch.randn(2, 10)  # 4 GAP columns first, then attended vectors
    torch.testing.assert_close(
        ab.class_activation_map(features, weight, 1),
        ab.class_activation_map(features, weight[:, :4], 1),
    )


def test_cam_bad_input():
    with pytest.raises(ValueError, match=r"features must be \(N, K, h, w\), got \(5, 4, 4\)"):
        ab.class_activation_map(torch.randn(5, 4, 4), torch.randn(2, 5), 0)
    with pytest.raises(ValueError, match=r"fc_weight has 3 inputs, fewer than the 5"):
        ab.class_activation_map(torch.randn(1, 5, 4, 4), torch.randn(2, 3), 0)
    with pytest.raises(ValueError, match=r"class_idx must lie in \[0, 2\), got \[2\]"):
        ab.class_activation_map(torch.randn(1, 5, 4, 4), torch.randn(2, 5), 2)
    with pytest.raises(ValueError, match=r"one class per image \(2\), got 3"):
        ab.class_activation_map(torch.randn(2, 5, 4, 4), torch.randn(2, 5), torch.tensor([0, 1, 0]))


def test_upsample_and_minmax():
    maps = torch.randn(2, 3, 5, 7).double()
    up = ab.upsample_maps(maps, (11, 13))
    torch.testing.assert_close(
        up, F.interpolate(maps.float(), size=(11, 13), mode="bilinear", align_corners=False)
    )
    norm = ab.minmax_maps(up)
    flat = norm.flatten(2)
    torch.testing.assert_close(flat.amin(-1), torch.zeros(2, 3))
    torch.testing.assert_close(flat.amax(-1), torch.ones(2, 3))
    # affine invariance: min-max of a*x + b (a > 0) equals min-max of x
    torch.testing.assert_close(ab.minmax_maps(3 * up + 7), norm, atol=1e-6, rtol=1e-5)
    assert torch.equal(ab.minmax_maps(torch.full((1, 4, 4), 2.0)), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, C, h, w\) or \(N, h, w\), got \(4, 4\)"):
        ab.minmax_maps(torch.zeros(4, 4))


def test_overlay_maps_of_recorded_gate_and_arl_style_maps():
    net = ab.AttentionGatedNet("resnet18", (2, 3), num_classes=2).eval()
    x = torch.randn(1, 3, 64, 48)
    with ab.record_attention(net) as maps:
        net(x)
    overlays = ab.overlay_maps(maps, (64, 48))
    assert set(overlays) == {"branches.0", "branches.1"}
    for name, m in overlays.items():
        assert m.shape == (1, 1, 64, 48)
        expected = ab.minmax_maps(ab.upsample_maps(maps[name], (64, 48)))
        torch.testing.assert_close(m, expected)
    arl_like = torch.rand(2, 8, 4, 4)  # a C-channel mask: averaged over channels
    out = ab.overlay_maps(arl_like, (8, 8), normalize=False)
    torch.testing.assert_close(out, ab.upsample_maps(arl_like.mean(1, keepdim=True), (8, 8)))
    with pytest.raises(TypeError, match=r"a Tensor or a dict"):
        ab.overlay_maps([arl_like], (8, 8))
