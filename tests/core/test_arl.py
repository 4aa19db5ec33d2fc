"""ARL blocks and ARLWrapper: the equation, exact weight transfer, alpha = 0 equivalence."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from timm.layers import DropPath
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

import attnblocks as ab
from attnblocks.normalize import get_normalization


def _randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so eval-mode equality means something."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


TIMM_ARCHS = [
    "resnet18",  # BasicBlock
    "resnet34",
    "resnet50",  # Bottleneck
    "resnet101",
    "resnet50d",  # deep stem, avg-pool shortcut
    "resnet50s",
    "resnet26t",  # tiered stem
    "resnext50_32x4d",  # grouped conv
    "wide_resnet50_2",
    "seresnet50",  # SE inside the residual branch
    "ecaresnet50d",
    "seresnext26d_32x4d",  # SE + grouped + deep stem
    "resnetblur50",  # blur-pool anti-aliasing
    "resnetaa50",
]


def _pair(src: nn.Module, mode: str) -> tuple[nn.Module, nn.Module]:
    src = _randomize_norms(src)
    arl = ab.ARLWrapper(src, alpha_init=0.0)
    return (src.train(), arl.train()) if mode == "train" else (src.eval(), arl.eval())


# one network per block kind by default (basic, bottleneck with avg-pool shortcut, SE + grouped);
# the whole list with the slow tests
FAST_TIMM_ARCHS = ("resnet18", "resnet50d", "seresnext26d_32x4d")


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize(
    "arch",
    [a if a in FAST_TIMM_ARCHS else pytest.param(a, marks=pytest.mark.slow) for a in TIMM_ARCHS],
)
def test_alpha_zero_equals_source_timm(arch, mode):
    src = timm.create_model(arch, pretrained=False, num_classes=3)
    src, arl = _pair(src, mode)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        diff = (arl(x) - src(x)).abs().max().item()
    assert diff <= 1e-5, f"{arch} ({mode}): max abs difference {diff}"
    n_blocks = sum(isinstance(m, BasicBlock | Bottleneck) for m in src.modules())
    assert n_blocks > 0 and len(arl.conversion_report.converted) == n_blocks


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize(
    "builder",
    [
        torchvision.models.resnet18,  # BasicBlock
        torchvision.models.resnet50,  # Bottleneck
        # the Bottleneck class again, grouped: its conversion is resnet50's
        pytest.param(torchvision.models.resnext50_32x4d, marks=pytest.mark.slow),
    ],
    ids=lambda builder: builder.__name__,
)
def test_alpha_zero_equals_source_torchvision(builder, mode):
    src, arl = _pair(builder(weights=None, num_classes=3), mode)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        diff = (arl(x) - src(x)).abs().max().item()
    assert diff <= 1e-5, f"{builder.__name__} ({mode}): max abs difference {diff}"
    assert len(arl.conversion_report.converted) == sum(
        isinstance(m, torchvision.models.resnet.BasicBlock | torchvision.models.resnet.Bottleneck)
        for m in src.modules()
    )


def _manual_arl(block: Bottleneck, x: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    """y = relu(s + F + alpha * N(F) * s), written out from the block's own submodules."""
    f = block.bn1(block.conv1(x)).relu()
    f = block.bn2(block.conv2(f)).relu()
    f = block.bn3(block.conv3(f))
    s = block.downsample(x) if block.downsample is not None else x
    return (s + f + alpha * get_normalization(norm)(f) * s).relu()


@pytest.mark.parametrize("norm", ["spatial", "channel", "sigmoid"])
@pytest.mark.parametrize("stride", [1, 2])
def test_block_matches_equation(norm, stride):
    inplanes, planes = 32, 16
    down = None
    if stride != 1 or inplanes != planes * 4:
        down = nn.Sequential(
            nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
        )
    plain = _randomize_norms(Bottleneck(inplanes, planes, stride=stride, downsample=down)).eval()
    block = ab.convert_block(plain, norm, alpha_init=0.7)
    assert isinstance(block, Bottleneck) and ab.is_arl_block(block) and not ab.is_arl_block(plain)
    x = torch.randn(2, inplanes, 11, 9).relu()
    with torch.no_grad():
        torch.testing.assert_close(block(x), _manual_arl(plain, x, 0.7, norm), atol=1e-5, rtol=1e-5)


def test_spatial_differs_from_channel_softmax():
    """The paper's spatial softmax is not nn.Softmax2d (the channel softmax)."""
    plain = _randomize_norms(Bottleneck(64, 16)).eval()
    x = torch.randn(1, 64, 8, 8).relu()
    with torch.no_grad():
        ys = ab.convert_block(plain, "spatial", 1.0)(x)
        yc = ab.convert_block(plain, "channel", 1.0)(x)
    assert (ys - yc).abs().max() > 1e-3


def test_drop_path_covers_the_whole_branch():
    torch.manual_seed(0)
    plain = _randomize_norms(Bottleneck(64, 16, drop_path=DropPath(0.5))).train()
    block = ab.convert_block(plain, "spatial", alpha_init=0.5)
    x = torch.randn(8, 64, 6, 6).relu()
    torch.manual_seed(1)
    y = block(x)
    # expected: the same DropPath mask applied to F + alpha * N(F) * s (re-seed to draw the same mask)
    f = block.bn3(block.conv3(block.bn2(block.conv2(block.bn1(block.conv1(x)).relu())).relu()))
    torch.manual_seed(1)
    expected = (x + plain.drop_path(f + 0.5 * get_normalization("spatial")(f) * x)).relu()
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    # a dropped block is the identity (x >= 0, so relu(x) = x)
    block.drop_path = DropPath(1.0)
    torch.testing.assert_close(block(x), x)


def test_drop_path_alpha_zero_equals_source_in_train_mode():
    src = timm.create_model("resnet26", num_classes=2, drop_path_rate=0.3).train()
    arl = ab.ARLWrapper(src, alpha_init=0.0).train()
    x = torch.randn(4, 3, 48, 48)
    torch.manual_seed(3)
    a = arl(x)
    torch.manual_seed(3)
    b = src(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_weights_and_keys_carried_over_exactly():
    src = _randomize_norms(timm.create_model("resnet50", num_classes=2))
    arl = ab.ARLWrapper(src)
    s_sd, a_sd = src.state_dict(), arl.state_dict()
    alphas = {f"{name}.alpha" for name in arl.alphas()}
    assert set(a_sd) == set(s_sd) | alphas and len(alphas) == 16
    assert alphas == set(arl.conversion_report.new_keys)
    for key, value in s_sd.items():
        assert torch.equal(a_sd[key], value), key
    assert sum(p.numel() for p in arl.parameters()) == sum(p.numel() for p in src.parameters()) + 16
    # the source model is untouched (a copy was converted)
    assert type(src) is timm.models.resnet.ResNet and not any(
        ab.is_arl_block(m) for m in src.modules()
    )


def test_alphas_init_and_gradients():
    arl = ab.ARLWrapper(timm.create_model("resnet18", num_classes=2), alpha_init=1e-3)
    alphas = arl.alphas()
    assert list(alphas) == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert all(a.item() == pytest.approx(1e-3) for a in alphas.values())
    arl(torch.randn(2, 3, 64, 64)).logsumexp(1).sum().backward()
    for name, block in arl.arl_blocks().items():
        assert block.alpha.grad is not None and block.alpha.grad.abs() > 0, name


def test_nonzero_alpha_changes_output():
    src = _randomize_norms(timm.create_model("resnet18", num_classes=2)).eval()
    arl = ab.ARLWrapper(src, alpha_init=0.5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (arl(x) - src(x)).abs().max() > 1e-3


def test_batch_one_odd_non_square_channels_last():
    arl = _randomize_norms(
        ab.ARLWrapper(timm.create_model("resnet50", num_classes=2), alpha_init=0.3)
    ).eval()
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        ref = arl(x)
        cl = copy.deepcopy(arl).to(memory_format=torch.channels_last)
        out = cl(x.contiguous(memory_format=torch.channels_last))
    assert ref.shape == (1, 2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with ab.record_attention(arl) as maps:
        arl(x)
    assert maps["layer1.0"].shape == (1, 256, 25, 33) and maps["layer4.2"].shape == (1, 2048, 4, 5)


@pytest.mark.parametrize("norm", ["spatial", "channel", "sigmoid"])
def test_bf16_autocast_cpu(norm):
    arl = _randomize_norms(
        ab.ARLWrapper(timm.create_model("resnet18", num_classes=4), norm, 0.5)
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = arl(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = arl(x)
            with ab.record_attention(arl) as maps:
                arl(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=0.03 * ref.abs().max().item(), rtol=0)
    # the bf16 error must be small against what the attention term contributes (alpha = 0.5 vs 0)
    with torch.no_grad():
        effect = (ref - arl.unwrap().eval()(x)).abs().max()
    assert (out.float() - ref).abs().max() < 0.5 * effect
    assert all(torch.isfinite(m).all() for m in maps.values())


def test_record_attention_masks_are_normalized():
    arl = _randomize_norms(ab.ARLWrapper(timm.create_model("resnet18", num_classes=2), "spatial"))
    arl.eval()  # random norms: F != 0, so the masks are not the uniform 1/(H*W) of a fresh timm model
    with ab.record_attention(arl) as maps:
        arl(torch.randn(2, 3, 64, 64))
        first = dict(maps)
        arl(torch.randn(1, 3, 32, 32))  # maps of the *last* forward
    assert set(maps) == set(arl.alphas())
    assert maps["layer2.1"].shape == (1, 128, 4, 4) and first["layer2.1"].shape == (2, 128, 8, 8)
    for m in first.values():
        torch.testing.assert_close(m.sum((2, 3)), torch.ones(m.shape[:2]))
        assert m.amax() > 2.0 / (m.shape[2] * m.shape[3])  # concentrated, not uniform
    with ab.record_attention(arl, include=["layer4.1"]) as only:
        arl(torch.randn(1, 3, 32, 32))
    assert list(only) == ["layer4.1"]


def test_compile_single_block_fullgraph():
    block = ab.convert_block(_randomize_norms(Bottleneck(32, 8)), "spatial", 0.2).eval()
    x = torch.randn(2, 32, 7, 9).relu()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), block(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_compile_whole_model_fullgraph_inductor():
    arl = ab.ARLWrapper(timm.create_model("resnet18", num_classes=2), alpha_init=0.3)
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(arl, fullgraph=True)
    out = compiled(x)
    torch.testing.assert_close(out, arl(x), atol=1e-4, rtol=1e-4)
    out.sum().backward()
    assert all(b.alpha.grad is not None for b in arl.arl_blocks().values())
