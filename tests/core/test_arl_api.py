"""ARLWrapper's model API: timm methods, checkpoints, selection, unwrap, pickling, errors."""

from __future__ import annotations

import copy
import io
import math

import pytest
import timm
import torch
import torchvision
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

import attnblocks as ab


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=3).eval()


def test_timm_api_keeps_working(resnet18):
    arl = ab.ARLWrapper(resnet18).eval()
    x = torch.randn(2, 3, 64, 64)
    assert isinstance(arl, ab.ARLWrapper) and isinstance(arl, timm.models.resnet.ResNet)
    assert type(arl).__name__ == "ARLResNet"
    feats = arl.forward_features(x)
    assert feats.shape == (2, 512, 2, 2)
    torch.testing.assert_close(arl.forward_head(feats), arl(x))
    assert arl.forward_head(feats, pre_logits=True).shape == (2, 512)
    assert arl.get_classifier() is arl.fc and arl.pretrained_cfg["architecture"] == "resnet18"
    arl.reset_classifier(7)
    assert arl(x).shape == (2, 7)
    assert ab.ARLWrapper(resnet18).default_cfg == resnet18.default_cfg


def test_features_only_model():
    torch.manual_seed(0)
    src = timm.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    arl = ab.ARLWrapper(src, alpha_init=0.0).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        outs, refs = arl(x), src(x)
    assert [o.shape[1] for o in outs] == [256, 512, 1024, 2048] == arl.feature_info.channels()
    for o, r in zip(outs, refs, strict=True):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5)


def test_block_selection_by_prefix_and_predicate(resnet18):
    arl = ab.ARLWrapper(resnet18, blocks=["layer4", "layer3.1"])
    assert arl.conversion_report.converted == ["layer3.1", "layer4.0", "layer4.1"]
    assert arl.conversion_report.skipped["layer1.0"] == "not selected"
    arl2 = ab.ARLWrapper(resnet18, blocks=lambda name, m: m.downsample is not None)
    assert arl2.conversion_report.converted == ["layer2.0", "layer3.0", "layer4.0"]
    with pytest.raises(ValueError, match="'layer9' matches no convertible block.*layer1.0"):
        ab.ARLWrapper(resnet18, blocks=["layer9"])


def test_report_lists_unsupported_blocks():
    model = timm.create_model("resnet18", num_classes=2)
    model.extra = timm.models.sknet.SelectiveKernelBasic(512, 512)
    report = ab.ARLWrapper(model).conversion_report
    assert report.skipped == {"extra": "unsupported block type SelectiveKernelBasic"}
    assert "8 blocks converted" in str(report) and "layer1.0.alpha" in str(report)


def test_unwrap_gives_the_plain_model_back(resnet18):
    arl = ab.ARLWrapper(resnet18, alpha_init=0.2)
    with torch.no_grad():
        arl.layer1[0].conv1.weight.add_(1.0)  # "training" changed a weight
    plain = arl.unwrap()
    assert type(plain) is timm.models.resnet.ResNet
    assert not any(ab.is_arl_block(m) for m in plain.modules())
    assert set(plain.state_dict()) == set(resnet18.state_dict())
    assert torch.equal(plain.layer1[0].conv1.weight, arl.layer1[0].conv1.weight)
    assert isinstance(arl, ab.ARLWrapper) and len(arl.alphas()) == 8  # arl itself untouched
    ab.ARLWrapper(plain)  # and it can be converted again


def test_inplace_conversion(resnet18):
    model = copy.deepcopy(resnet18)
    arl = ab.ARLWrapper(model, inplace=True)
    assert arl is model and isinstance(model, ab.ARLWrapper)


def test_pickle_and_deepcopy_round_trip(resnet18):
    arl = ab.ARLWrapper(resnet18, "sigmoid", alpha_init=0.3).eval()
    x = torch.randn(1, 3, 40, 40)
    buf = io.BytesIO()
    torch.save(arl, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    clone = copy.deepcopy(arl)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), arl(x))
        torch.testing.assert_close(clone(x), arl(x))
    assert type(loaded) is type(arl) and loaded.layer2[0].arl_normalization == "sigmoid"
    assert loaded.conversion_report.converted == arl.conversion_report.converted


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_plain_checkpoint_loads_into_arl(tmp_path, suffix):
    torch.manual_seed(1)
    plain = timm.create_model("resnet50", num_classes=5)
    path = tmp_path / f"plain{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(plain.state_dict(), str(path))
    else:  # a DDP training checkpoint: nested and prefixed
        torch.save(
            {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in plain.state_dict().items()}},
            path,
        )
    arl = ab.ARLWrapper(timm.create_model("resnet50", num_classes=5), alpha_init=0.0)
    report = ab.load_checkpoint(arl, path)
    assert sorted(report.new) == sorted(arl.conversion_report.new_keys)
    assert report.missing == report.unexpected == report.reinitialized == []
    assert len(report.loaded) == len(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(arl.eval()(x), plain.eval()(x), atol=1e-5, rtol=1e-5)


def test_torchvision_checkpoint_loads_into_timm_arl(tmp_path):
    """torchvision and timm ResNet-50 share the key layout: ImageNet-style weights move across."""
    torch.manual_seed(2)
    tv = torchvision.models.resnet50(weights=None).eval()
    torch.save(tv.state_dict(), tmp_path / "resnet50_tv.pth")
    model = ab.arl_cnn50(num_classes=2, weights=tmp_path / "resnet50_tv.pth", alpha_init=0.0).eval()
    assert model.load_report.reinitialized == ["fc.weight", "fc.bias"]
    assert model.load_report.missing == [] and model.load_report.unexpected == []
    assert torch.equal(model.layer3[4].conv2.weight, tv.layer3[4].conv2.weight)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stem = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        expected = tv.layer4(tv.layer3(tv.layer2(tv.layer1(stem))))
        torch.testing.assert_close(model.forward_features(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            model.forward_head(expected, pre_logits=True), expected.mean((2, 3))
        )


def test_checkpoint_errors(tmp_path):
    arl = ab.ARLWrapper(timm.create_model("resnet18", num_classes=2))
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        ab.load_checkpoint(arl, tmp_path / "nothere.pth")
    # small stand-ins: a ResNet-18 with a third layer1 block (as ResNet-34), and a one-block-per-
    # stage bottleneck ResNet twice as wide (as Wide ResNet-50-2 against ResNet-50)
    other = ResNet(BasicBlock, [3, 2, 2, 2], num_classes=2)
    torch.save(other.state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="does not match ARLResNet.*unexpected.*layer1.2"):
        ab.load_checkpoint(arl, tmp_path / "r34.pth")
    report = ab.load_checkpoint(arl, tmp_path / "r34.pth", strict=False)
    assert "layer1.2.conv1.weight" in report.unexpected
    wide = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=2, base_width=128)
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    narrow = ab.ARLWrapper(ResNet(Bottleneck, [1, 1, 1, 1], num_classes=2))
    with pytest.raises(ValueError, match="shape mismatch.*layer1.0.conv1.weight"):
        ab.load_checkpoint(narrow, tmp_path / "wide.pth")
    # strict=False skips the tensors of another shape, loads the rest and reports both
    report = ab.load_checkpoint(narrow, tmp_path / "wide.pth", strict=False)
    assert report.mismatched["layer1.0.conv2.weight"] == ((128, 128, 3, 3), (64, 64, 3, 3))
    assert "conv1.weight" in report.loaded and "layer1.0.conv2.weight" not in report.loaded
    assert torch.equal(narrow.conv1.weight, wide.conv1.weight)
    # a Lightning-style checkpoint needs prefix=; without it nothing fits, which is an error
    torch.save(
        {"state_dict": {f"net.{k}": v for k, v in other.state_dict().items()}}, tmp_path / "l.ckpt"
    )
    with pytest.raises(ValueError, match=r"no tensor of .*l\.ckpt fits .*prefix='net\.'"):
        ab.load_checkpoint(arl, tmp_path / "l.ckpt", strict=False)
    assert ab.load_checkpoint(arl, tmp_path / "l.ckpt", strict=False, prefix="net").loaded
    torch.save([1, 2], tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        ab.load_checkpoint(arl, tmp_path / "junk.pt")


def test_builders_match_the_paper():
    m14 = ab.arl_cnn14(num_classes=2)
    plain14 = ab.resnet14(num_classes=2)
    assert [len(getattr(plain14, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]
    assert plain14.conv1.kernel_size == (7, 7) and plain14.conv1.out_channels == 64
    assert list(m14.alphas()) == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    n14 = sum(p.numel() for p in plain14.parameters())
    assert sum(p.numel() for p in m14.parameters()) == n14 + 4
    m50 = ab.arl_cnn50(num_classes=2)
    assert len(m50.alphas()) == 16 and m50.fc.out_features == 2
    assert m50.arl_blocks()["layer1.0"].arl_normalization == "spatial"
    with pytest.raises(ValueError, match="either weights=PATH or pretrained=True"):
        ab.arl_cnn50(weights="x.pth", pretrained=True)


def test_errors(resnet18):
    with pytest.raises(
        TypeError, match="VGG has no residual block.*ConvMlp.*supported block types"
    ):
        # a narrow classifier MLP (the 4096-wide one is 120 M parameters to initialise)
        ab.ARLWrapper(timm.create_model("vgg11", num_classes=2, mlp_ratio=1 / 64))
    with pytest.raises(TypeError, match="SelectiveKernelBasic"):
        ab.ARLWrapper(timm.create_model("skresnet18", num_classes=2))
    with pytest.raises(TypeError, match="expects an nn.Module, got str"):
        ab.ARLWrapper("resnet50")
    with pytest.raises(
        ValueError, match="unknown normalization 'softmax'.*channel, sigmoid, spatial"
    ):
        ab.ARLWrapper(resnet18, normalization="softmax")
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="alpha_init must be finite"):
            ab.ARLWrapper(resnet18, alpha_init=bad)
    with pytest.raises(TypeError, match="alpha_init must be a real number"):
        ab.ARLWrapper(resnet18, alpha_init="0.001")
    arl = ab.ARLWrapper(resnet18)
    with pytest.raises(ValueError, match="converting twice"):
        ab.ARLWrapper(arl)
    holder = nn.Sequential(ab.convert_block(resnet18.layer1[0]))
    with pytest.raises(ValueError, match="already contains ARL blocks"):
        ab.ARLWrapper(holder)
    with pytest.raises(ValueError, match="already an ARL block"):
        ab.convert_block(arl.layer1[0])
    with pytest.raises(TypeError, match="cannot convert Linear"):
        ab.convert_block(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no attention tap"):
        with ab.record_attention(resnet18):
            pass


def test_register_custom_block():
    class TinyBlock(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1)
            self.act = nn.ReLU()
            self.downsample = None

        def forward(self, x):
            return self.act(x + self.conv(x))

    ab.register_arl_block(TinyBlock, lambda b, x: b.conv(x), act="act")
    try:
        net = nn.Sequential(TinyBlock(4), TinyBlock(4))
        x = torch.randn(2, 4, 5, 5)
        arl = ab.ARLWrapper(net, alpha_init=0.0)
        torch.testing.assert_close(arl(x), net(x))
        assert any("TinyBlock" in name for name in ab.list_arl_block_types())
    finally:
        from attnblocks import arl as arl_module

        arl_module._BLOCK_SPECS.pop(TinyBlock)


@pytest.mark.parametrize("tool", ["torchvision_fx", "timm_hook", "timm_fx"])
def test_attention_taps_visible_to_feature_extractors(tool):
    """The attn_map taps are ordinary modules: FX feature extractors and hooks find them."""
    model = ab.ARLWrapper(timm.create_model("resnet18", num_classes=2), "spatial", 0.5).eval()
    x = torch.randn(2, 3, 64, 48)
    with ab.record_attention(model) as expected:
        logits = model(x)
    if tool == "torchvision_fx":
        from torchvision.models.feature_extraction import create_feature_extractor

        nodes = {f"{name}.attn_map": name for name in expected} | {"fc": "logits"}
        out = create_feature_extractor(model, return_nodes=nodes)(x)
        torch.testing.assert_close(out.pop("logits"), logits, atol=1e-5, rtol=1e-5)
    else:
        from timm.utils import AttentionExtract

        extract = AttentionExtract(model, names=["*attn_map"], method=tool.split("_")[1])
        out = {k.removesuffix(".attn_map"): v for k, v in extract(x).items()}
    assert set(out) == set(expected)
    for name, mask in expected.items():
        torch.testing.assert_close(out[name], mask, atol=1e-6, rtol=1e-5)
