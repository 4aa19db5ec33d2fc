"""The library's networks behave as timm models.

The checks of timm's own model tests (``tests/test_models.py`` of pytorch-image-models: forward with
gradient checkpointing, backward, default_cfgs, features_only, forward_intermediates, fx forward and
backward), written here for: the registered builders (``arl_cnn14``, ``arl_cnn14_plain`` =
``resnet14``), an ``ARLWrapper``'d timm ResNet, ``AttentionGatedNet`` on a timm backbone and
``attnmel_vgg16``. Inputs are small (64 px) where a check allows; the default_cfgs check runs at the
configured input size because it checks ``pool_size``. Then Grad-CAM on each of them, with
``ab.grad_cam``'s default target layer and with pytorch-grad-cam at ``cam_layer``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import timm
import timm.optim
import torch
import torch.nn.functional as F
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules
from timm.models._features import FeatureGetterNet
from torch import nn

import attnblocks as ab
from attnblocks.gradcam import default_target_layer

SIZE = 64  # input side for the forward / backward / features / fx checks


def _arl_resnet18(**kw):
    return ab.ARLWrapper(timm.create_model("resnet18", **kw))


def _gated(backbone: str) -> Callable[..., nn.Module]:
    return lambda **kw: ab.AttentionGatedNet(backbone, (2, 3), **kw)


# name -> factory(**timm kwargs); the registered builders go through timm.create_model, as a timm
# user would
MODELS: dict[str, Callable[..., nn.Module]] = {
    "arl_cnn14": lambda **kw: timm.create_model("arl_cnn14", **kw),
    "resnet14": lambda **kw: timm.create_model("arl_cnn14_plain", **kw),
    "arl_resnet18": _arl_resnet18,
    "gated_resnet18": _gated("resnet18"),
    "gated_lite0": _gated("efficientnet_lite0"),
    "attnmel_vgg16": lambda **kw: timm.create_model("attnmel_vgg16", **kw),
}
GATED = ("gated_resnet18", "gated_lite0", "attnmel_vgg16")
# resnet14 is arl_cnn14 without the ARL forward, and ARLWrapper'd timm ResNets are tested at length
# in test_arl_api.py, and the gated EfficientNet-Lite0 shares the code of the gated ResNet-18: by
# default they run the default_cfg and Grad-CAM checks only
REPEATS = ("resnet14", "arl_resnet18", "gated_lite0")


def _slow_for(*slow: str, names: tuple[str, ...] = tuple(MODELS)) -> list:
    """``names``, those in ``slow`` marked slow (same code path as another one)."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


def _x(batch: int, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


@pytest.mark.parametrize("name", _slow_for(*REPEATS))
def test_forward_and_grad_checkpointing(name):
    model = MODELS[name]().eval()
    x = _x(1)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, model.num_classes) and not out.isnan().any()
        model.set_grad_checkpointing()  # every one of these supports it
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", _slow_for(*REPEATS))
def test_backward_reaches_every_parameter(name):
    model = MODELS[name](num_classes=42).train()
    out = model(_x(2))
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert sum(p.grad.numel() for p in model.parameters()) == sum(
        p.numel() for p in model.parameters()
    )
    assert out.shape == (2, 42) and not out.isnan().any()


@pytest.mark.parametrize("name", list(MODELS))
def test_default_cfg_pool_size_and_classifier_reset(name):
    model = MODELS[name]().eval()
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    cfg = model.default_cfg
    assert cfg is model.pretrained_cfg or cfg == model.pretrained_cfg
    for key in ("input_size", "pool_size", "crop_pct", "interpolation", "mean", "std"):
        assert key in cfg, key
    params = model.state_dict()
    firsts = (cfg["first_conv"],) if isinstance(cfg["first_conv"], str) else cfg["first_conv"]
    assert all(f"{f}.weight" in params for f in firsts), firsts
    assert f"{cfg['classifier']}.weight" in params and cfg["num_classes"] == model.num_classes
    assert model.get_classifier() is model.get_submodule(cfg["classifier"])
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert feats.shape == (1, model.num_features, *cfg["pool_size"])
        assert pre.shape == (1, model.head_hidden_size)
        torch.testing.assert_close(model.forward_head(feats), model(x), rtol=1e-5, atol=1e-5)
        small = _x(1)
        model.reset_classifier(0)
        assert model.num_classes == 0
        torch.testing.assert_close(
            model(small), model.forward_head(model.forward_features(small), pre_logits=True)
        )
        model.reset_classifier(0, "")
        unpooled = model(small)
        assert unpooled.shape == (1, model.num_features, SIZE // 32, SIZE // 32)
        torch.testing.assert_close(unpooled, model.forward_features(small))
        model.reset_classifier(5, "avg")
        assert model(small).shape == (1, 5) and model.num_classes == 5
    bare = MODELS[name](num_classes=0, global_pool="").eval()
    with torch.no_grad():
        assert bare(small).shape == (1, bare.num_features, SIZE // 32, SIZE // 32)


def _check_stages(outputs, info: FeatureInfo, batch: int, size: int) -> None:
    assert len(outputs) == len(info.channels()) >= 3
    for c, r, o in zip(info.channels(), info.reduction(), outputs, strict=True):
        assert o.shape[:2] == (batch, c)
        assert all(s <= math.ceil(size / r) + 1 for s in o.shape[-2:]), (o.shape, r)
        assert not o.isnan().any()


@pytest.mark.parametrize(
    "name", _slow_for(*REPEATS, names=tuple(n for n in MODELS if n not in GATED))
)
@pytest.mark.parametrize("feature_cls", ["list", "getter"])
def test_features_only(name, feature_cls):
    if name == "arl_resnet18":  # ARLWrapper converts a features_only model
        model = ab.ARLWrapper(
            timm.create_model("resnet18", features_only=True, feature_cls=feature_cls)
        )
    else:
        model = MODELS[name](features_only=True, feature_cls=feature_cls)
    model.eval()
    with torch.no_grad():
        _check_stages(model(_x(1)), model.feature_info, 1, SIZE)
    picked = (
        MODELS[name](features_only=True, out_indices=(1, 3)) if name != "arl_resnet18" else None
    )
    if picked is not None:
        assert picked.feature_info.channels() == [256, 1024]  # bottleneck widths of ResNet-14


def test_attnmel_features_only_is_timms_getter_over_its_stages():
    feats = timm.create_model("attnmel_vgg16", features_only=True).eval()
    assert feats.feature_info.reduction() == [2, 4, 8, 16, 32]
    with torch.no_grad():
        _check_stages(feats(_x(1)), feats.feature_info, 1, SIZE)
    assert "classifier" not in feats.pretrained_cfg and feats.default_cfg["input_size"][1] == 224
    picked = timm.create_model("attnmel_vgg16", features_only=True, out_indices=(2, 4))
    assert picked.feature_info.channels() == [256, 512]
    with pytest.raises(ValueError, match=r"feature_cls='getter' only, got 'hook'"):
        timm.create_model("attnmel_vgg16", features_only=True, feature_cls="hook")


@pytest.mark.parametrize("name", _slow_for(*REPEATS))
def test_forward_intermediates(name):
    model = MODELS[name]().eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    x = _x(1)
    with torch.no_grad():
        final, stages = model.forward_intermediates(x)
        _check_stages(stages, info, 1, SIZE)
        torch.testing.assert_close(final, model.forward_features(x))
        last = model.forward_intermediates(x, indices=1, intermediates_only=True)
        assert len(last) == 1 and torch.equal(last[0], stages[-1])
        model.set_grad_checkpointing()
        again, _ = model.forward_intermediates(x)
        torch.testing.assert_close(again, final, rtol=1e-4, atol=1e-5)
        # timm's forward_intermediates feature extractor on the model itself
        getter = FeatureGetterNet(model, out_indices=list(range(len(info))))
        _check_stages(getter(x), getter.feature_info, 1, SIZE)


def _fx_model(model: nn.Module, train: bool) -> nn.Module:
    from torchvision.models.feature_extraction import (
        create_feature_extractor,
        get_graph_node_names,
    )

    kwargs = {
        "leaf_modules": get_notrace_modules(),
        "autowrap_functions": get_notrace_functions(),
        "param_shapes_constant": True,
    }
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kwargs)
    return create_feature_extractor(
        model,
        train_return_nodes=[train_nodes[-1]],
        eval_return_nodes=[eval_nodes[-1]],
        tracer_kwargs=kwargs,
    ).train(train)


@pytest.mark.parametrize("name", _slow_for(*REPEATS))
def test_fx_forward_and_backward(name):
    model = MODELS[name](num_classes=42).eval()
    x = _x(2)
    with torch.inference_mode():
        ref = model(x)
        (out,) = _fx_model(model, train=False)(x).values()
    assert torch.equal(out, ref) and out.shape == (2, 42)
    fx = _fx_model(model.train(), train=True)
    (out,) = fx(x).values()
    out.mean().backward()
    assert [n for n, p in fx.named_parameters() if p.grad is None] == []
    assert out.shape == (2, 42) and not out.isnan().any()


# --- builders: same keys and numbers as before they went through timm -------------------------


def test_builders_load_state_dicts_of_the_direct_resnet_construction(tmp_path):
    from timm.models.resnet import Bottleneck, ResNet

    torch.manual_seed(3)
    old = ResNet(block=Bottleneck, layers=(1, 1, 1, 1), num_classes=2).eval()
    old_arl = ab.ARLWrapper(old, alpha_init=0.5).eval()
    for param in old_arl.parameters():  # non-trivial values everywhere, BN statistics included
        param.data.normal_(0, 0.05)
    for name, buf in old_arl.named_buffers():
        if name.endswith("running_var"):
            buf.uniform_(0.5, 1.5)
    torch.save(old_arl.state_dict(), tmp_path / "arl_cnn14.pth")
    new_arl = ab.arl_cnn14(num_classes=2).eval()
    new_arl.load_state_dict(torch.load(tmp_path / "arl_cnn14.pth", weights_only=True))
    plain = ab.resnet14(num_classes=2).eval()
    plain.load_state_dict(old_arl.unwrap().state_dict())
    x = _x(2)
    with torch.no_grad():
        assert torch.equal(new_arl(x), old_arl(x))
        assert torch.equal(plain(x), old_arl.unwrap()(x))
    assert list(plain.state_dict()) == list(old.state_dict())
    torch.manual_seed(4)
    fresh_old = ResNet(block=Bottleneck, layers=(1, 1, 1, 1), num_classes=2)
    torch.manual_seed(4)
    fresh_new = ab.resnet14(num_classes=2)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            fresh_old.state_dict().values(), fresh_new.state_dict().values(), strict=True
        )
    )
    assert plain.pretrained_cfg["architecture"] == "arl_cnn14_plain"
    assert new_arl.pretrained_cfg["architecture"] == "arl_cnn14"
    assert timm.data.resolve_data_config(model=new_arl)["crop_pct"] == 0.875
    with pytest.raises(ValueError, match=r"arl_cnn14 has no pretrained weights"):
        timm.create_model("arl_cnn14", pretrained=True)
    assert timm.list_models("arl_cnn*") == ["arl_cnn14", "arl_cnn14_plain", "arl_cnn50"]
    assert timm.list_models("attnmel*") == ["attnmel_vgg16"]
    assert timm.list_models(["arl*", "attnmel*"], pretrained=True) == []  # no weights claimed
    overlay = timm.create_model("attnmel_vgg16", pretrained_cfg_overlay={"crop_pct": 1.0})
    assert overlay.pretrained_cfg["crop_pct"] == 1.0
    m50 = timm.create_model("arl_cnn50", num_classes=3)
    assert m50.fc.out_features == 3 and len(m50.alphas()) == 16


# --- the gated networks' timm API in numbers --------------------------------------------------


@pytest.fixture(scope="module")
def attnmel() -> ab.AttentionGatedNet:
    torch.manual_seed(0)
    return ab.attnmel_vgg16(num_classes=2).eval()


def test_gated_features_map_pools_to_the_published_head(attnmel):
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        p3, p4, p5 = attnmel.backbone(x)
        a3, _ = attnmel.gates[0](p3, p5)
        a4, _ = attnmel.gates[1](p4, p5)
        feats = attnmel.forward_features(x)
    assert feats.shape == (2, 1280, 2, 2)
    torch.testing.assert_close(feats[:, :512], p5)  # the global stage, unpooled
    torch.testing.assert_close(feats[:, 512:768], a3[:, :, None, None].expand(-1, -1, 2, 2))
    torch.testing.assert_close(feats[:, 768:], a4[:, :, None, None].expand(-1, -1, 2, 2))
    vector = torch.cat([p5.mean((2, 3)), a3, a4], 1)
    torch.testing.assert_close(attnmel.forward_head(feats, pre_logits=True), vector)
    # the attention maps stay reachable
    logits, maps = attnmel.forward_with_attention(x)
    assert [m.shape for m in maps] == [(2, 1, 8, 10), (2, 1, 4, 5)]
    # pretrained_cfg keys name this network's own modules
    cfg = attnmel.pretrained_cfg
    assert (cfg["first_conv"], cfg["classifier"]) == ("backbone.model.features.0", "classifier")
    assert cfg["pool_size"] == (7, 7) and cfg["min_input_size"] == (3, 32, 32)
    assert [d["reduction"] for d in attnmel.feature_info] == [2, 4, 8, 16, 32]


def test_gated_reset_classifier_and_pooling():
    net = ab.AttentionGatedNet("resnet18", (2, 3), num_classes=2).eval()
    x = _x(2)
    with torch.no_grad():
        stages = net.forward_intermediates(x, intermediates_only=True)
        feats = net.forward_features(x)
        net.reset_classifier(4, global_pool="max")
        assert net.classifier.in_features == 896 and net(x).shape == (2, 4)
        vec = net.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(vec[:, :512], stages[4].amax((2, 3)))
        torch.testing.assert_close(vec[:, 512:], feats[:, 512:, 0, 0])
        net.reset_classifier(3, global_pool="catavgmax")
        assert net.classifier.in_features == 2 * 896 and net.head_hidden_size == 1792
        assert net(x).shape == (2, 3)
        net.reset_classifier(0)
        assert net(x).shape == (2, 1792) and isinstance(net.get_classifier(), nn.Identity)
    with pytest.raises(ValueError, match=r"global_pool='' \(no pooling\) needs num_classes=0"):
        net.reset_classifier(2, "")
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 0, got 1.5"):
        net.reset_classifier(1.5)


def test_gated_feature_info_ends_at_the_global_stage_of_a_features_only_backbone():
    backbone = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3, 4))
    net = ab.AttentionGatedNet(backbone, gate_stages=(0, 1), global_stage=2).eval()
    assert [d["module"] for d in net.feature_info] == [
        "backbone.layer1",
        "backbone.layer2",
        "backbone.layer3",
    ]
    assert net.cam_layer is backbone.layer3 and net.pretrained_cfg["first_conv"] == "backbone.conv1"
    x = _x(1)
    with torch.no_grad():
        final, stages = net.forward_intermediates(x)
    assert final.shape == (1, 64 + 128 + 256, 4, 4) and stages[-1].shape == (1, 256, 4, 4)
    assert ab.grad_cam(net, x).cam.shape == (1, 1, SIZE, SIZE)


def test_gated_group_matcher_gives_layer_decay_groups():
    net = ab.AttentionGatedNet("resnet18", (2, 3), num_classes=2)
    opt = timm.optim.create_optimizer_v2(net, "sgd", lr=0.1, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    stem = scale[id(net.backbone.model.conv1.weight)]
    last_block = scale[id(net.backbone.model.layer4[1].conv2.weight)]
    head = {scale[id(p)] for p in [*net.branches.parameters(), *net.classifier.parameters()]}
    assert head == {1.0} and stem < last_block < 1.0
    # the backbone's own groups: stem, then one per block (8 in a ResNet-18), then gates + head
    assert len(set(scale.values())) == 10
    layer4 = net.backbone.model.layer4[1]
    assert scale[id(layer4.conv1.weight)] == scale[id(layer4.bn2.bias)] == last_block
    coarse = net.group_matcher(coarse=True)
    assert coarse("backbone.model.layer3.0.conv1.weight") == coarse(
        "backbone.model.layer3.1.bn2.bias"
    )
    assert coarse("branches.0.psi.weight") == coarse("classifier.bias") == (math.inf,)


def test_gated_grad_checkpointing_keeps_gradients(attnmel):
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for enable in (False, True):
        attnmel.set_grad_checkpointing(enable)
        attnmel.zero_grad(set_to_none=True)
        attnmel(x).sum().backward()
        grads.append([p.grad.clone() for p in attnmel.parameters()])
    attnmel.set_grad_checkpointing(False)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_inputs_below_the_vgg_minimum_are_rejected(attnmel):
    with pytest.raises(ValueError, match=r"input \(31, 40\) is too small .* at least 32x32"):
        attnmel(torch.randn(1, 3, 31, 40))
    with pytest.raises(ValueError, match=r"at least 32x32"):
        attnmel.forward_intermediates(torch.randn(1, 3, 40, 16))
    with torch.no_grad():
        assert attnmel(torch.randn(1, 3, 32, 32)).shape == (1, 2)
    # a VGG gated up to pool-4 needs 16 px
    net = ab.AttentionGatedNet("vgg11", (1, 2), global_stage=3)
    with pytest.raises(ValueError, match=r"at least 16x16"):
        net(torch.randn(1, 3, 15, 15))


# --- Grad-CAM ---------------------------------------------------------------------------------

LAYERS = {
    "arl_cnn14": "layer4",
    "resnet14": "layer4",
    "arl_resnet18": "layer4",
    "gated_resnet18": "backbone.model.layer4",
    "gated_lite0": "backbone.model.blocks.6",
    "attnmel_vgg16": "backbone.model.features.43",
}


def _hand_grad_cam(model, x, layer: nn.Module, targets) -> torch.Tensor:
    acts = []
    handle = layer.register_forward_hook(lambda m, i, o: acts.append(o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[torch.arange(len(x)), targets].sum(), acts[0])
    cam = (grad.mean((2, 3), keepdim=True) * acts[0]).sum(1, keepdim=True)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    lo, hi = cam.amin((2, 3), keepdim=True), cam.amax((2, 3), keepdim=True)
    return (cam - lo) / (hi - lo)


@pytest.mark.parametrize("name", list(MODELS))
def test_grad_cam_default_target_layer(name):
    model = MODELS[name](num_classes=3).eval()
    assert default_target_layer(model) == LAYERS[name]
    x = torch.randn(2, 3, 64, 48)
    targets = torch.tensor([0, 2])
    cam, logits = ab.grad_cam(model, x, targets=targets)
    assert cam.shape == (2, 1, 64, 48) and logits.shape == (2, 3)
    assert cam.amin((1, 2, 3)).tolist() == [0.0, 0.0] and cam.amax((1, 2, 3)).tolist() == [1, 1]
    expected = _hand_grad_cam(model, x, model.get_submodule(LAYERS[name]), targets)
    torch.testing.assert_close(cam, expected, atol=1e-5, rtol=1e-4)
    if name in GATED:  # cam_layer's output is the global stage's map
        assert model.cam_layer is model.get_submodule(LAYERS[name])
        seen = []
        handle = model.cam_layer.register_forward_hook(lambda m, i, o: seen.append(o))
        with torch.no_grad():
            final = model.forward_intermediates(x, intermediates_only=True)[-1]
        handle.remove()
        assert torch.equal(seen[0], final)


@pytest.mark.parametrize(
    "name", [pytest.param("arl_cnn14", marks=pytest.mark.slow), "gated_resnet18", "attnmel_vgg16"]
)
def test_pytorch_grad_cam_at_the_documented_layer(name):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(5)
    model = MODELS[name](num_classes=3).eval()
    layer = model.cam_layer if name in GATED else model.layer4
    x = torch.randn(2, 3, 96, 64)
    # per image, the class whose map has the most positive evidence (pytorch-grad-cam applies a
    # ReLU: a map that is negative everywhere would be all zero)
    raw = [
        ab.grad_cam(model, x, targets=torch.full((2,), c), normalize=False, upsample=False).cam
        for c in range(3)
    ]
    targets = torch.stack([r.clamp_min(0).sum((1, 2, 3)) for r in raw], 1).argmax(1)
    with GradCAM(model=model, target_layers=[layer]) as theirs:
        maps = theirs(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in targets])
    assert maps.shape == (2, 96, 64)
    ours = ab.grad_cam(model, x, targets=targets, relu=True).cam[:, 0].detach()
    theirs_t = torch.as_tensor(maps, dtype=torch.float32)
    for a, b in zip(ours, theirs_t, strict=True):
        assert a.max() == 1 and b.max() > 0.99  # not a flat map
        corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert corr > 0.95, corr
        assert (a - b).abs().mean() < 0.05
        # both look at the same place: their peaks are where the other is high
        assert b.flatten()[a.argmax()] > 0.8 and a.flatten()[b.argmax()] > 0.8
