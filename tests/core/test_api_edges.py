"""Input edges of the public API: checkpoints from other trainers, excluded samples of the Dice
regularizer, and parameters validated as the dtype they are used in."""

from __future__ import annotations

import math
import zipfile

import pytest
import torch
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

import attnblocks as ab

NAN, INF = math.nan, math.inf


class _Net(nn.Module):
    """A small network with a stem, a norm and a classifier (``fc``)."""

    def __init__(self, width: int = 4, num_classes: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3)
        self.bn1 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn1(self.conv1(x)).mean((2, 3)))


def _randomised(width: int = 4, num_classes: int = 2) -> _Net:
    net = _Net(width, num_classes)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
        net.bn1.running_mean.normal_()
    return net


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# --- checkpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("holder", "prefix", "suffix"),
    [("net", "net.", ".ckpt"), ("net", "net", ".pth"), ("model", "model.", ".pt")],
)
def test_checkpoint_prefix_strips_a_lightning_submodule(tmp_path, holder, prefix, suffix):
    src = _randomised()
    lightning = {
        "epoch": 4,
        "global_step": 120,
        "state_dict": {
            **{f"{holder}.{k}": v for k, v in src.state_dict().items()},
            "criterion.pos_weight": torch.tensor([2.0]),
        },
    }
    path = tmp_path / f"run{suffix}"
    torch.save(lightning, path)
    dst = _Net()
    report = ab.load_checkpoint(dst, path, prefix=prefix)
    _assert_same_weights(dst, src)
    assert report.ignored == ["criterion.pos_weight"]
    assert report.missing == report.unexpected == report.reinitialized == []
    assert report.loaded == sorted(src.state_dict())
    assert "ignored (outside the prefix): criterion.pos_weight" in str(report)


@pytest.mark.parametrize("prefix", ["model.", "module.model."])
def test_checkpoint_prefix_after_ddp_module_unwrap(tmp_path, prefix):
    src = _randomised()
    state = {f"module.model.{k}": v for k, v in src.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "ddp.pt")
    dst = _Net()
    report = ab.load_checkpoint(dst, tmp_path / "ddp.pt", prefix=prefix)
    _assert_same_weights(dst, src)
    assert report.ignored == [] and report.missing == []


def test_checkpoint_prefix_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = _randomised()
    save_file({f"net.{k}": v for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    dst = _Net()
    ab.load_checkpoint(dst, tmp_path / "w.safetensors", prefix="net.")
    _assert_same_weights(dst, src)


def test_checkpoint_prefix_that_matches_nothing_is_an_error(tmp_path):
    state = {f"net.{k}": v for k, v in _randomised().state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "run.ckpt")
    dst = _Net()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=r"prefix 'model\.' matches no key .*\['net\.'\]"):
        ab.load_checkpoint(dst, tmp_path / "run.ckpt", prefix="model.")
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


@pytest.mark.parametrize(
    ("prefix", "error", "match"),
    [
        (3, TypeError, r"prefix must be a str .* got int"),
        (".", ValueError, r"prefix must name a submodule .* got '\.'"),
        ("", ValueError, r"prefix must name a submodule .* got ''"),
    ],
)
def test_checkpoint_bad_prefix(tmp_path, prefix, error, match):
    torch.save(_Net().state_dict(), tmp_path / "w.pth")
    with pytest.raises(error, match=match):
        ab.load_checkpoint(_Net(), tmp_path / "w.pth", prefix=prefix)


@pytest.mark.parametrize("strict", [True, False])
def test_checkpoint_that_fits_no_tensor_is_an_error_naming_the_prefix(tmp_path, strict):
    """A Lightning checkpoint loaded without ``prefix`` matches nothing: an error, not a no-op."""
    state = {f"net.{k}": v for k, v in _randomised().state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "run.ckpt")
    dst = _Net()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=r"no tensor of .*run\.ckpt fits _Net.*prefix='net\.'"):
        ab.load_checkpoint(dst, tmp_path / "run.ckpt", strict=strict)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_checkpoint_of_another_network_fits_no_tensor(tmp_path):
    torch.save({"encoder.weight": torch.ones(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"no tensor of .*other\.pth fits _Net: 1 of its 1 keys"):
        ab.load_checkpoint(_Net(), tmp_path / "other.pth", strict=False)


def test_strict_false_skips_shape_mismatches_and_reports_them(tmp_path):
    src = _randomised(width=6)  # conv1/bn1 have 6 channels, the model 4: not a classifier
    torch.save(src.state_dict(), tmp_path / "wide.pth")
    dst = _Net(width=4)
    with pytest.raises(
        ValueError, match=r"shape mismatch .*conv1\.weight: checkpoint \(6, 3, 3, 3\)"
    ):
        ab.load_checkpoint(dst, tmp_path / "wide.pth")
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    report = ab.load_checkpoint(dst, tmp_path / "wide.pth", strict=False)
    assert report.mismatched["conv1.weight"] == ((6, 3, 3, 3), (4, 3, 3, 3))
    assert report.mismatched["bn1.running_mean"] == ((6,), (4,))
    assert report.reinitialized == ["fc.weight"]  # the classifier is re-initialised, as before
    assert report.loaded == ["bn1.num_batches_tracked", "fc.bias"]
    after = dst.state_dict()
    assert torch.equal(after["conv1.weight"], before["conv1.weight"])  # skipped: kept its value
    assert torch.equal(after["fc.bias"], src.fc.bias)  # what fits is loaded
    assert "skipped (shape mismatch): conv1.weight (checkpoint (6, 3, 3, 3) vs model" in str(report)


def test_strict_false_on_an_arl_resnet_loads_all_that_fits(tmp_path):
    """A ResNet whose stem is wider than the model's loads everything but the mismatched tensors."""
    src = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=2, stem_width=32, stem_type="deep")
    dst = ab.ARLWrapper(
        ResNet(BasicBlock, [1, 1, 1, 1], num_classes=2, stem_width=16, stem_type="deep")
    )
    torch.save(src.state_dict(), tmp_path / "r.pth")
    report = ab.load_checkpoint(dst, tmp_path / "r.pth", strict=False)
    # the deep stem and the first conv after it differ; every later tensor loads
    assert "conv1.0.weight" in report.mismatched and "layer1.0.conv1.weight" in report.mismatched
    assert all(k.startswith(("conv1.", "bn1.", "layer1.0.conv1.")) for k in report.mismatched)
    assert len(report.loaded) + len(report.mismatched) + len(report.reinitialized) == len(
        src.state_dict()
    )
    assert torch.equal(dst.layer3[0].conv2.weight, src.layer3[0].conv2.weight)
    assert sorted(report.new) == sorted(dst.conversion_report.new_keys)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ([1, 2], r"does not hold a state dict of tensors: it holds a list"),
        ({}, r"it holds an empty dict"),
        ({"conv1.weight": torch.ones(1), "epoch": 3}, r"entry 'epoch' is a int"),
        ({"weights": {"conv1.weight": torch.ones(1)}}, r"entry 'weights' is a dict with keys"),
        ({"state_dict": {"conv1.weight": [1.0]}}, r"unpacked from a training checkpoint.*list"),
    ],
)
def test_checkpoint_that_is_not_a_state_dict(tmp_path, content, match):
    torch.save(content, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=match):
        ab.load_checkpoint(_Net(), tmp_path / "bad.pt")


@pytest.mark.parametrize("kind", ["garbage", "truncated", "safetensors", "pickled model"])
def test_unreadable_checkpoint_is_a_value_error(tmp_path, kind):
    if kind == "pickled model":
        path = tmp_path / "w.pth"
        torch.save(_Net(), path)
        with pytest.raises(ValueError, match=r"a pickled model\?.*save model\.state_dict\(\)"):
            ab.load_checkpoint(_Net(), path)
        return
    if kind == "garbage":
        path = tmp_path / "w.pth"
        path.write_bytes(b"not a checkpoint at all")
    elif kind == "truncated":
        path = tmp_path / "w.pth"
        torch.save(_Net().state_dict(), path)
        path.write_bytes(path.read_bytes()[:200])
        assert not zipfile.is_zipfile(path)
    else:
        path = tmp_path / "w.safetensors"
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad json}")
    with pytest.raises(ValueError, match=rf"cannot read checkpoint .*{path.name}: \S"):
        ab.load_checkpoint(_Net(), path)


@pytest.mark.parametrize("strict", ["False", 0, None])
def test_checkpoint_strict_must_be_a_bool(tmp_path, strict):
    torch.save(_Net().state_dict(), tmp_path / "w.pth")
    with pytest.raises(TypeError, match=rf"strict must be True or False, got {strict!r}"):
        ab.load_checkpoint(_Net(), tmp_path / "w.pth", strict=strict)


# --- Dice regularizer: excluded samples and empty batches ------------------------------------------


@pytest.mark.parametrize("reduction", ["batch", "image"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_dice_non_finite_map_of_an_excluded_sample_changes_nothing(reduction, bad):
    gen = torch.Generator().manual_seed(3)
    reg = ab.DiceAttentionRegularizer(weights=(0.5, 2.0), reduction=reduction)
    masks = torch.rand(3, 1, 16, 16, generator=gen) > 0.5
    raw = [torch.rand(3, 1, 8, 8, generator=gen), torch.rand(3, 1, 4, 4, generator=gen)]
    for m in raw:
        m[1] = bad
    maps = [m.clone().requires_grad_() for m in raw]
    loss = reg(maps, masks, valid=torch.tensor([True, False, True]))
    loss.backward()
    kept = [m[[0, 2]].clone().requires_grad_() for m in raw]
    expected = reg(kept, masks[[0, 2]])
    expected.backward()
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    for full, sub in zip(maps, kept, strict=True):
        assert torch.isfinite(full.grad).all()
        torch.testing.assert_close(full.grad[[0, 2]], sub.grad, rtol=1e-6, atol=0)
        assert torch.equal(full.grad[1], torch.zeros_like(full.grad[1]))


@pytest.mark.parametrize("reduction", ["batch", "image"])
def test_dice_nan_mask_of_an_excluded_sample_is_not_read(reduction):
    gen = torch.Generator().manual_seed(4)
    reg = ab.DiceAttentionRegularizer(weights=(1.0,), reduction=reduction)
    masks = torch.rand(3, 1, 16, 16, generator=gen)
    masks[1] = NAN
    maps = [torch.rand(3, 1, 8, 8, generator=gen)]
    loss = reg(maps, masks, valid=torch.tensor([True, False, True]))
    expected = reg([maps[0][[0, 2]]], masks[[0, 2]])
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"float masks must lie in \[0, 1\]"):
        reg(maps, masks, valid=torch.tensor([True, True, False]))


@pytest.mark.parametrize("reduction", ["batch", "image"])
@pytest.mark.parametrize("encoding", [torch.bool, torch.uint8, torch.float32])
def test_dice_empty_batch_and_all_invalid_batch_agree(reduction, encoding):
    reg = ab.DiceAttentionRegularizer(weights=(1.0, 1.0), reduction=reduction)
    results = []
    for n, valid in ((0, None), (0, torch.zeros(0, dtype=torch.bool)), (2, torch.zeros(2))):
        maps = [
            torch.rand(n, 1, 8, 8, requires_grad=True),
            torch.rand(n, 1, 4, 4, requires_grad=True),
        ]
        masks = torch.ones(n, 1, 16, 16).to(encoding)
        loss = reg(maps, masks, valid=valid)
        loss.backward()
        assert loss.requires_grad and all(torch.equal(m.grad, torch.zeros_like(m)) for m in maps)
        results.append(loss.item())
    assert results == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("reduction", ["batch", "image"])
def test_soft_dice_with_eps_zero_and_nothing_to_count_is_zero_not_nan(reduction):
    a, m = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    assert ab.soft_dice(a, m, torch.zeros(2), reduction, eps=0.0).item() == 0.0
    assert ab.soft_dice(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), None, reduction, 0.0) == 0


def test_soft_dice_rejects_shapes_that_would_broadcast():
    with pytest.raises(ValueError, match=r"attn \(2, 1, 4, 4\) and mask \(1, 1, 4, 4\) must have"):
        ab.soft_dice(torch.rand(2, 1, 4, 4), torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"attn must be \(N, C, h, w\), got \(4, 4\)"):
        ab.soft_dice(torch.rand(4, 4), torch.rand(4, 4))


# --- parameter validation ------------------------------------------------------------------------


_FOCAL_FORMS = {
    "FocalLoss": lambda **kw: ab.FocalLoss(**kw)(torch.randn(4, 2), torch.tensor([0, 1, 1, 0])),
    "focal_loss": lambda **kw: ab.focal_loss(torch.randn(4, 2), torch.tensor([0, 1, 1, 0]), **kw),
    "sigmoid_focal_loss": lambda **kw: ab.sigmoid_focal_loss(
        torch.randn(4), torch.tensor([0.0, 1.0, 1.0, 0.0]), **kw
    ),
}


@pytest.mark.parametrize("form", list(_FOCAL_FORMS))
@pytest.mark.parametrize(
    ("gamma", "error"),
    [(NAN, ValueError), (INF, ValueError), (-0.5, ValueError), (True, TypeError), ("2", TypeError)],
)
def test_focal_gamma_is_validated(form, gamma, error):
    with pytest.raises(error, match=rf"{form}: gamma must be a .*number >= 0, got {gamma!r}"):
        _FOCAL_FORMS[form](gamma=gamma)


@pytest.mark.parametrize("form", ["FocalLoss", "focal_loss"])
@pytest.mark.parametrize(
    ("alpha", "error", "match"),
    [
        (-0.25, ValueError, r"a float alpha must lie in \[0, 1\].*got -0\.25"),
        (NAN, ValueError, r"a float alpha must lie in \[0, 1\].*got nan"),
        (1.5, ValueError, r"a float alpha must lie in \[0, 1\].*got 1\.5"),
        ([0.5, -1.0], ValueError, r"per-class alpha weights must be finite and >= 0.*-1\.0"),
        ([NAN, 1.0], ValueError, r"per-class alpha weights must be finite and >= 0.*nan"),
        (
            torch.tensor([1.0, INF]),
            ValueError,
            r"per-class alpha weights must be finite and >= 0.*inf",
        ),
        ([], ValueError, r"alpha must hold one weight per class, got none"),
        (True, TypeError, r"alpha must be a float, a sequence of floats or None, got True"),
        ([0.5, "1"], TypeError, r"alpha must hold numbers"),
    ],
)
def test_focal_alpha_is_validated(form, alpha, error, match):
    with pytest.raises(error, match=rf"{form}: {match}"):
        _FOCAL_FORMS[form](alpha=alpha)


def test_focal_per_class_alpha_of_wrong_length():
    with pytest.raises(ValueError, match=r"alpha has 3 weights, expected one per class \(2\)"):
        ab.FocalLoss(alpha=[1.0, 1.0, 1.0])(torch.randn(4, 2), torch.tensor([0, 1, 1, 0]))


@pytest.mark.parametrize(
    ("alpha", "error"),
    [
        (NAN, ValueError),
        (INF, ValueError),
        (-INF, ValueError),
        (1.5, ValueError),
        (True, TypeError),
    ],
)
def test_sigmoid_focal_alpha_is_validated(alpha, error):
    with pytest.raises(error, match=rf"sigmoid_focal_loss: alpha must be a .*got {alpha!r}"):
        _FOCAL_FORMS["sigmoid_focal_loss"](alpha=alpha)


def test_sigmoid_focal_negative_alpha_still_disables_weighting():
    x, t = torch.randn(6), (torch.rand(6) > 0.5).float()
    torch.testing.assert_close(
        ab.sigmoid_focal_loss(x, t, alpha=-1.0), ab.sigmoid_focal_loss(x, t, alpha=None)
    )


@pytest.mark.parametrize("form", ["FocalLoss", "focal_loss"])
def test_focal_ignore_index_must_be_an_int(form):
    with pytest.raises(TypeError, match=rf"{form}: ignore_index must be an int, got True"):
        _FOCAL_FORMS[form](ignore_index=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"weights": (NAN,)},
            ValueError,
            r"weights must be one or more finite numbers >= 0, got \(nan,\)",
        ),
        (
            {"weights": (1.0, INF)},
            ValueError,
            r"weights must be one or more finite numbers >= 0, got \(1\.0, inf\)",
        ),
        (
            {"weights": (-1e-3,)},
            ValueError,
            r"weights must be one or more finite numbers >= 0, got \(-0\.001,\)",
        ),
        ({"weights": ()}, ValueError, r"weights must be one or more finite numbers >= 0, got \(\)"),
        ({"weights": 1e-3}, TypeError, r"weights must be a sequence of numbers .*got 0\.001"),
        ({"weights": "ab"}, TypeError, r"weights must be a sequence of numbers .*got 'ab'"),
        ({"weights": (True, 1.0)}, TypeError, r"weights must be numbers, got True"),
        ({"eps": NAN}, ValueError, r"eps must be a finite float >= 0, got nan"),
        ({"eps": -1e-6}, ValueError, r"eps must be a finite float >= 0, got -1e-06"),
        ({"eps": True}, TypeError, r"eps must be a float >= 0, got True"),
        (
            {"reduction": None},
            ValueError,
            r"reduction must be one of \('batch', 'image'\), got None",
        ),
    ],
)
def test_dice_regularizer_parameters_are_validated(kwargs, error, match):
    with pytest.raises(error, match=rf"DiceAttentionRegularizer: {match}"):
        ab.DiceAttentionRegularizer(**kwargs)


def test_dice_regularizer_accepts_a_weight_tensor():
    reg = ab.DiceAttentionRegularizer(weights=torch.tensor([1e-3, 1e-2]))
    assert reg.weights == pytest.approx((1e-3, 1e-2))


@pytest.fixture(scope="module")
def tiny_resnet() -> nn.Module:
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"blocks": []},
            ValueError,
            r"blocks=\[\] selects no block, so nothing would be converted",
        ),
        ({"blocks": ()}, ValueError, r"blocks=\(\) selects no block"),
        (
            {"blocks": lambda n, m: False},
            ValueError,
            r"the predicate selects none of the .*layer1\.0",
        ),
        (
            {"blocks": 5},
            TypeError,
            r"blocks must be None \(all blocks\), a block name .*; got int 5",
        ),
        ({"blocks": ["layer4", 3]}, TypeError, r"got the entry 3 \(int\)"),
        ({"blocks": nn.ReLU()}, TypeError, r"blocks must be .*got the module ReLU"),
        ({"alpha_init": NAN}, ValueError, r"alpha_init must be finite, got nan"),
        ({"alpha_init": INF}, ValueError, r"alpha_init must be finite, got inf"),
        ({"alpha_init": True}, TypeError, r"alpha_init must be a real number, got bool"),
        ({"normalization": "softmax2d"}, ValueError, r"unknown normalization 'softmax2d'; known:"),
        ({"normalization": 3}, TypeError, r"normalization must be a name or a callable, got int"),
        ({"inplace": "yes"}, TypeError, r"inplace must be True or False, got 'yes'"),
    ],
)
def test_arl_wrapper_arguments_are_validated(tiny_resnet, kwargs, error, match):
    with pytest.raises(error, match=match):
        ab.ARLWrapper(tiny_resnet, **kwargs)
    assert not any(ab.is_arl_block(m) for m in tiny_resnet.modules())


def test_arl_wrapper_prefix_with_a_trailing_dot(tiny_resnet):
    arl = ab.ARLWrapper(tiny_resnet, blocks=["layer4."])
    assert arl.conversion_report.converted == ["layer4.0"]


# --- CARE, boxes, CAM, gates, recorder -----------------------------------------------------------


def _care_maps() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    boxes = torch.tensor([[1.0, 1.0, 5.0, 5.0], [2.0, 0.0, 8.0, 6.0], [0.0, 0.0, 4.0, 8.0]])
    inner, outer = ab.box_to_inner_outer(boxes, (8, 8))
    return torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(5)), inner, outer


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tau": NAN}, ValueError, r"tau must be a finite number > 0, got nan"),
        ({"tau": INF}, ValueError, r"tau must be a finite number > 0, got inf"),
        ({"tau": -0.5}, ValueError, r"tau must be a finite number > 0, got -0\.5"),
        ({"tau": True}, TypeError, r"tau must be a finite number > 0, got True"),
        ({"tau": "0.5"}, TypeError, r"tau must be a finite number > 0, got '0\.5'"),
        ({"mix": NAN}, ValueError, r"mix must be a finite number in \[0, 1\], got nan"),
        ({"mix": True}, TypeError, r"mix must be a finite number in \[0, 1\], got True"),
        ({"mix": None}, TypeError, r"mix must be a finite number in \[0, 1\], got None"),
        ({"reduction": ["sum"]}, ValueError, r"reduction must be one of .* got \['sum'\]"),
    ],
)
def test_care_loss_parameters_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        ab.CAREAttentionLoss(**kwargs)


@pytest.mark.parametrize("tau", [NAN, -1.0, 0.0])
def test_care_attention_loss_function_validates_tau(tau):
    cam, inner, outer = _care_maps()
    with pytest.raises(ValueError, match=rf"care_attention_loss: tau must be .*got {tau!r}"):
        ab.care_attention_loss(cam, inner, outer, tau=tau)


def test_care_attention_loss_rejects_a_non_tensor_cam():
    _, inner, outer = _care_maps()
    with pytest.raises(TypeError, match=r"cam must be a Tensor, got list"):
        ab.care_attention_loss([[0.5]], inner, outer)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_care_nan_map_of_an_image_that_does_not_count_changes_nothing(reduction):
    raw, inner, outer = _care_maps()
    raw[1] = NAN
    cam = raw.clone().requires_grad_()
    loss = ab.care_attention_loss(
        cam, inner, outer, valid=torch.tensor([True, False, True]), reduction=reduction
    )
    sub = raw[[0, 2]].clone().requires_grad_()
    expected = ab.care_attention_loss(sub, inner[[0, 2]], outer[[0, 2]], reduction=reduction)
    if reduction == "none":
        assert loss[1].item() == 0.0
        loss, expected = loss[[0, 2]], expected
    torch.testing.assert_close(loss, expected)
    loss.sum().backward()
    expected.sum().backward()
    assert torch.isfinite(cam.grad).all() and torch.equal(
        cam.grad[1], torch.zeros_like(cam.grad[1])
    )
    torch.testing.assert_close(cam.grad[[0, 2]], sub.grad)


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.num_classes = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stem(x).mean((2, 3)))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"rare_classes": 2},
            TypeError,
            r"rare_classes must be a sequence of class indices .*got 2$",
        ),
        ({"rare_classes": "12"}, TypeError, r"rare_classes must be a sequence .*got '12'"),
        ({"rare_classes": [1.5]}, TypeError, r"got the entry 1\.5 in \[1\.5\]"),
        ({"rare_classes": [True]}, TypeError, r"got the entry True in \[True\]"),
        ({"rare_classes": torch.tensor([1.0])}, TypeError, r"got a torch\.float32 tensor"),
        (
            {"rare_classes": [1], "num_classes": True},
            TypeError,
            r"num_classes must be an int >= 1, got True",
        ),
        (
            {"rare_classes": [1], "num_classes": 0},
            ValueError,
            r"num_classes must be an int >= 1, got 0",
        ),
        (
            {"rare_classes": [1], "criterion": "ce"},
            TypeError,
            r"criterion must be a callable .*got 'ce'",
        ),
        (
            {"rare_classes": [1], "enabled": "no"},
            TypeError,
            r"enabled must be True or False, got 'no'",
        ),
        (
            {"rare_classes": [1], "clip_boxes": 1},
            TypeError,
            r"clip_boxes must be True or False, got 1",
        ),
        (
            {"rare_classes": [1], "tau": NAN},
            ValueError,
            r"tau must be a finite number > 0, got nan",
        ),
    ],
)
def test_care_arguments_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        ab.CARE(_TinyNet(), "stem", **kwargs)


def test_care_accepts_an_integer_tensor_of_rare_classes():
    assert ab.CARE(_TinyNet(), "stem", rare_classes=torch.tensor([2, 0])).rare_classes == [2, 0]


@pytest.mark.parametrize(
    ("size", "error", "match"),
    [
        (8, TypeError, r"size must be \(H, W\), a pair of positive ints, got 8"),
        ((8.5, 8), TypeError, r"size must be \(H, W\), a pair of positive ints, got \(8\.5, 8\)"),
        ((True, 8), TypeError, r"a pair of positive ints, got \(True, 8\)"),
        ((NAN, 8), TypeError, r"a pair of positive ints, got \(nan, 8\)"),
        ((0, 8), ValueError, r"size must be \(H, W\) with positive sides, got \(0, 8\)"),
    ],
)
def test_box_maps_size_is_validated(size, error, match):
    with pytest.raises(error, match=match):
        ab.box_to_inner_outer(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), size)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"threshold": NAN}, ValueError, r"threshold must be a finite number in \[0, 1\), got nan"),
        (
            {"threshold": 1.0},
            ValueError,
            r"threshold must be a finite number in \[0, 1\), got 1\.0",
        ),
        ({"threshold": -0.1}, ValueError, r"in \[0, 1\), got -0\.1"),
        (
            {"threshold": True},
            TypeError,
            r"threshold must be a finite number in \[0, 1\), got True",
        ),
        ({"margin": True}, TypeError, r"margin must be a finite fraction >= 0, got True"),
    ],
)
def test_boxes_from_masks_parameters_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        ab.boxes_from_masks(torch.ones(1, 8, 8), **kwargs)


def test_boxes_from_masks_rejects_nan_masks_and_non_tensors():
    with pytest.raises(ValueError, match=r"masks hold NaN values"):
        ab.boxes_from_masks(torch.full((1, 8, 8), NAN))
    with pytest.raises(TypeError, match=r"masks must be a Tensor .*got list"):
        ab.boxes_from_masks([[0.0, 1.0]])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"width": 0}, ValueError, r"width must be an int >= 1, got 0"),
        ({"width": 2.5}, TypeError, r"width must be an int >= 1, got 2\.5"),
        ({"sigma": 0.0}, ValueError, r"sigma must be a finite number > 0, got 0\.0"),
        ({"sigma": NAN}, ValueError, r"sigma must be a finite number > 0, got nan"),
        ({"sigma": -1.0}, ValueError, r"sigma must be a finite number > 0, got -1\.0"),
    ],
)
def test_saliency_parameters_are_validated(kwargs, error, match):
    with pytest.raises(error, match=rf"spectral_residual_saliency: {match}"):
        ab.spectral_residual_saliency(torch.rand(1, 3, 16, 16), **kwargs)


@pytest.mark.parametrize("threshold", [NAN, INF, 0.0])
def test_boxes_from_saliency_threshold_is_validated(threshold):
    with pytest.raises(
        ValueError, match=rf"threshold .* must be a finite number > 0, got {threshold!r}"
    ):
        ab.boxes_from_saliency(torch.rand(1, 3, 16, 16), threshold=threshold)


def test_saliency_of_an_empty_batch_is_empty():
    sal = ab.spectral_residual_saliency(torch.rand(0, 3, 16, 12))
    assert sal.shape == (0, 1, 16, 12) and sal.dtype == torch.float32
    boxes, valid = ab.boxes_from_saliency(torch.rand(0, 3, 16, 12))
    assert boxes.shape == (0, 4) and valid.shape == (0,)


@pytest.mark.parametrize(
    ("class_idx", "match"),
    [
        (
            torch.tensor([1.7, 0.2]),
            r"class_idx must hold class indices \(int\), got dtype torch\.float32",
        ),
        (True, r"class_idx must be an int or int tensor, got True"),
    ],
)
def test_class_activation_map_refuses_non_integer_classes(class_idx, match):
    with pytest.raises(TypeError, match=match):
        ab.class_activation_map(torch.rand(2, 4, 3, 3), torch.rand(3, 4), class_idx)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: ab.upsample_maps(torch.rand(2, 1, 3, 3), (0, 4)),
            ValueError,
            r"upsample_maps: size must be \(H, W\) with positive sides",
        ),
        (
            lambda: ab.upsample_maps(torch.rand(2, 1, 3, 3), 8),
            TypeError,
            r"upsample_maps: size must be \(H, W\), a pair of positive ints, got 8",
        ),
        (
            lambda: ab.overlay_maps(torch.rand(2, 1, 3, 3), (4.0, 4.0)),
            TypeError,
            r"overlay_maps: size must be",
        ),
        (
            lambda: ab.overlay_maps(torch.rand(2, 1, 3, 3), (4, 4), normalize="no"),
            TypeError,
            r"normalize must be True or False, got 'no'",
        ),
        (
            lambda: ab.minmax_maps(torch.ones(1, 1, 3, 3), eps=NAN),
            ValueError,
            r"minmax_maps: eps must be a finite number > 0, got nan",
        ),
        (
            lambda: ab.minmax_maps(torch.ones(1, 1, 3, 3), eps=0.0),
            ValueError,
            r"eps must be a finite number > 0, got 0\.0",
        ),
    ],
)
def test_map_helpers_validate_their_parameters(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("key", ["normalization", "aggregation"])
def test_grid_gate_refuses_unhashable_names(key):
    with pytest.raises(ValueError, match=rf"GridAttentionGate: unknown {key} \['mean'\]"):
        ab.GridAttentionGate(4, 4, **{key: ["mean"]})


@pytest.fixture(scope="module")
def tiny_arl(tiny_resnet) -> nn.Module:
    return ab.ARLWrapper(tiny_resnet).eval()


def test_record_attention_include_one_name_as_a_str(tiny_arl):
    with torch.no_grad(), ab.record_attention(tiny_arl, include="layer2.0") as maps:
        tiny_arl(torch.rand(1, 3, 32, 32))
    assert list(maps) == ["layer2.0"] and maps["layer2.0"].shape == (1, 128, 4, 4)


@pytest.mark.parametrize(
    ("model", "kwargs", "error", "match"),
    [
        (None, {"include": []}, ValueError, r"include=\[\] records nothing"),
        (None, {"detach": "no"}, TypeError, r"detach must be True or False, got 'no'"),
        (None, {"include": 3}, TypeError, r"include must be a list of owner names, got 3"),
        ([1], {}, TypeError, r"model must be an nn\.Module, got list"),
    ],
)
def test_record_attention_arguments_are_validated(tiny_arl, model, kwargs, error, match):
    with pytest.raises(error, match=match):
        with ab.record_attention(tiny_arl if model is None else model, **kwargs):
            pass


# --- loss inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "targets", [[0.0, 255.0, 0.0, 255.0], [0.0, NAN, 1.0, 0.0], [-1.0, 0.0, 1.0, 1.0]]
)
def test_sigmoid_focal_targets_outside_0_1_are_refused(targets):
    with pytest.raises(ValueError, match=r"sigmoid_focal_loss: targets must lie in \[0, 1\]"):
        ab.sigmoid_focal_loss(torch.randn(4), torch.tensor(targets), reduction="mean")


def test_sigmoid_focal_mean_of_an_empty_input_is_zero_like_focal_loss():
    x = torch.randn(0, requires_grad=True)
    loss = ab.sigmoid_focal_loss(x, torch.zeros(0), reduction="mean")
    loss.backward()
    assert loss.item() == 0.0 and x.grad.shape == (0,)
    assert ab.focal_loss(torch.randn(0, 3), torch.zeros(0, dtype=torch.long)).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.long, torch.bool])
def test_focal_losses_refuse_integer_logits(dtype):
    with pytest.raises(TypeError, match=rf"focal_loss: input must be float logits .*{dtype}"):
        ab.focal_loss(torch.ones(4, 3, dtype=dtype), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(
        TypeError, match=rf"sigmoid_focal_loss: inputs must be float logits.*{dtype}"
    ):
        ab.sigmoid_focal_loss(torch.ones(4, dtype=dtype), torch.zeros(4))


@pytest.mark.parametrize(("maps", "name"), [(5, "int"), (None, "NoneType"), ("maps", "str")])
def test_dice_maps_of_the_wrong_kind(maps, name):
    reg = ab.DiceAttentionRegularizer(weights=(1.0,))
    with pytest.raises(
        TypeError, match=rf"maps must be a Tensor or a sequence of Tensors .*got {name}"
    ):
        reg(maps, torch.zeros(2, 8, 8))


def test_dice_valid_of_the_wrong_kind():
    reg = ab.DiceAttentionRegularizer(weights=(1.0,))
    with pytest.raises(TypeError, match=r"valid must be a bool or float tensor, got 'ab'"):
        reg([torch.rand(2, 1, 4, 4)], torch.zeros(2, 8, 8), valid="ab")


def test_grid_gate_refuses_integer_features():
    gate = ab.GridAttentionGate(4, 4)
    with pytest.raises(
        TypeError, match=r"local must be a float tensor \(features\), got torch\.int64"
    ):
        gate(torch.ones(1, 4, 8, 8, dtype=torch.long), torch.rand(1, 4, 2, 2))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"local_channels": True}, TypeError),
        ({"gate_channels": 4.0}, TypeError),
        ({"inter_channels": 0}, ValueError),
    ],
)
def test_grid_gate_channels_are_ints(kwargs, error):
    args = {"local_channels": 4, "gate_channels": 4, **kwargs}
    name, value = next(iter(kwargs.items()))
    with pytest.raises(
        error, match=rf"GridAttentionGate: {name} must be a positive int, got {value!r}"
    ):
        ab.GridAttentionGate(**args)


def test_arl_alpha_init_accepts_a_numpy_float(tiny_resnet):
    np = pytest.importorskip("numpy")
    arl = ab.ARLWrapper(tiny_resnet, alpha_init=np.float32(0.25), blocks="layer1")
    assert arl.alphas() == {"layer1.0": torch.tensor(0.25)}
