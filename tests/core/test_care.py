"""CARE loss and training helper: hand-made maps, the tau cap, the mix, inference unchanged."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import attnblocks as ab


def _maps() -> tuple[torch.Tensor, torch.Tensor]:
    # 4x4 image, box = the top-left 2x2 block
    return ab.box_to_inner_outer(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), (4, 4))


@pytest.mark.parametrize(
    ("fill_in", "fill_out", "expected"),
    [
        (1.0, 0.0, -0.5),  # all attention inside: inner mean 1 capped at tau
        (0.0, 1.0, 1.0),  # all outside
        (1.0, 1.0, 0.5),  # uniform: -0.5 + 1
        (0.3, 0.2, -0.1),  # inner mean 0.3 below tau: -0.3 + 0.2
    ],
)
def test_loss_on_hand_made_maps(fill_in: float, fill_out: float, expected: float) -> None:
    inner, outer = _maps()
    cam = torch.full((1, 1, 4, 4), fill_out)
    cam[..., :2, :2] = fill_in
    got = ab.care_attention_loss(cam, inner, outer)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert ab.CAREAttentionLoss()(cam, inner, outer).item() == pytest.approx(expected, abs=1e-6)


def test_inner_term_has_no_gradient_above_tau() -> None:
    inner, outer = _maps()
    zero_outer = torch.zeros_like(outer)
    above = torch.full((1, 1, 4, 4), 0.8, requires_grad=True)  # inner mean 0.8 > tau
    ab.care_attention_loss(above, inner, zero_outer).backward()
    assert torch.equal(above.grad, torch.zeros_like(above))
    below = torch.full((1, 1, 4, 4), 0.2, requires_grad=True)  # inner mean 0.2 < tau
    ab.care_attention_loss(below, inner, zero_outer).backward()
    torch.testing.assert_close(below.grad, -inner)
    # the outer term always pulls attention out of the background
    cam = torch.full((1, 1, 4, 4), 0.8, requires_grad=True)
    ab.care_attention_loss(cam, inner, outer).backward()
    torch.testing.assert_close(cam.grad, outer)


def test_tau_and_reductions() -> None:
    inner, outer = _maps()
    cam = torch.ones(3, 1, 4, 4)
    cam[1, ..., :2, :2] = 0.0  # -0 + mean outside(=1) = 1
    inner, outer = inner.expand(3, -1, -1, -1), outer.expand(3, -1, -1, -1)
    per = ab.care_attention_loss(cam, inner, outer, tau=0.9, reduction="none")
    torch.testing.assert_close(per, torch.tensor([0.1, 1.0, 0.1]))
    valid = torch.tensor([True, False, True])
    torch.testing.assert_close(
        ab.care_attention_loss(cam, inner, outer, 0.9, valid, "none"), torch.tensor([0.1, 0, 0.1])
    )
    assert ab.care_attention_loss(cam, inner, outer, 0.9, valid).item() == pytest.approx(0.2)
    assert ab.care_attention_loss(cam, inner, outer, 0.9, valid, "mean").item() == pytest.approx(
        0.1
    )
    none = torch.zeros(3, dtype=torch.bool)
    assert ab.care_attention_loss(cam, inner, outer, 0.9, none, "mean").item() == 0.0


def test_convex_mix() -> None:
    inner, outer = _maps()
    cam = torch.rand(1, 1, 4, 4)
    ce = torch.tensor(2.0)
    loss = ab.CAREAttentionLoss(tau=0.5, mix=0.25)
    att = ab.care_attention_loss(cam, inner, outer)
    torch.testing.assert_close(loss(cam, inner, outer, cls_loss=ce), 0.75 * ce + 0.25 * att)
    assert "tau=0.5, mix=0.25" in repr(loss)


def test_loss_errors() -> None:
    inner, outer = _maps()
    with pytest.raises(ValueError, match=r"tau must be a finite number > 0, got 0"):
        ab.CAREAttentionLoss(tau=0)
    with pytest.raises(ValueError, match=r"mix must be a finite number in \[0, 1\], got 1.5"):
        ab.CAREAttentionLoss(mix=1.5)
    with pytest.raises(ValueError, match="reduction"):
        ab.CAREAttentionLoss(reduction="max")
    with pytest.raises(ValueError, match=r"outer must have the cam's shape \(1, 1, 4, 4\)"):
        ab.care_attention_loss(torch.rand(1, 1, 4, 4), inner, outer[..., :3])
    with pytest.raises(ValueError, match=r"cam must be \(N, 1, H, W\)"):
        ab.care_attention_loss(torch.rand(1, 2, 4, 4), inner, outer)
    with pytest.raises(ValueError, match="one flag per image"):
        ab.care_attention_loss(torch.rand(1, 1, 4, 4), inner, outer, valid=torch.ones(2))


def test_gradcheck_float64() -> None:
    inner, outer = ab.box_to_inner_outer(torch.tensor([[1.0, 1.0, 3.0, 4.0]] * 2), (5, 4))
    cam = torch.rand(2, 1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda c: ab.care_attention_loss(c, inner.double(), outer.double(), reduction="none"),
        (cam,),
    )


# --- the CARE helper --------------------------------------------------------------------------


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.feat = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feat(self.stem(x)).mean(dim=(2, 3)))


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    images = torch.randn(4, 3, 12, 10)
    targets = torch.tensor([0, 2, 1, 2])
    boxes = torch.tensor([[0.0, 0, 5, 6], [2, 2, 8, 9], [0, 0, 10, 12], [4, 5, 10, 12]])
    valid = torch.tensor([True, True, True, False])
    return images, targets, boxes, valid


def test_care_equals_the_hand_assembled_loss_and_gradients() -> None:
    model = TinyNet()
    twin = copy.deepcopy(model)
    images, targets, boxes, valid = _batch()
    care = ab.CARE(model, "feat", rare_classes=[2], mix=0.3, outer="distance")
    out = care(images, targets, boxes, valid)
    assert out.selected.tolist() == [False, True, False, False]
    assert all(p.grad is None for p in model.parameters())  # nothing leaked before backward
    out.loss.backward()

    cam, logits = ab.grad_cam(twin, images, "feat", targets)
    inner, outer = ab.box_to_inner_outer(boxes, (12, 10), "distance", out.selected)
    att = ab.care_attention_loss(cam, inner, outer, valid=out.selected)
    ce = F.cross_entropy(logits, targets)
    expected = 0.7 * ce + 0.3 * att
    expected.backward()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.care_loss, att)
    torch.testing.assert_close(out.cam[1], cam[1])
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_care_leaves_model_state_and_inference_unchanged() -> None:
    model = TinyNet()
    plain = copy.deepcopy(model)
    care = ab.CARE(model, "feat", rare_classes=[1, 2])
    images, targets, boxes, valid = _batch()
    care(images, targets, boxes, valid)  # a training forward: BN statistics move in both models
    plain(images)
    a, b = model.state_dict(), plain.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    model.eval(), plain.eval()
    x = torch.randn(2, 3, 12, 10)
    assert torch.equal(model(x), plain(x))
    assert all(not m._forward_hooks for m in model.modules())


def test_care_disabled_or_unboxed_is_plain_cross_entropy() -> None:
    model = TinyNet()
    images, targets, boxes, valid = _batch()
    care = ab.CARE(model, "feat", rare_classes=[2], enabled=False)
    out = care(images, targets, boxes, valid)
    ref = F.cross_entropy(model(images), targets)
    torch.testing.assert_close(out.loss, ref)
    assert out.cam is None and out.care_loss.item() == 0.0
    care.enabled = True
    torch.testing.assert_close(care(images, targets, None).loss, ref)
    no_rare = care(images, torch.tensor([0, 1, 0, 1]), boxes, valid)
    assert no_rare.cam is None and not no_rare.selected.any()


def test_care_training_pulls_attention_into_the_box() -> None:
    torch.manual_seed(0)
    model = TinyNet(num_classes=2)
    images = torch.randn(8, 3, 16, 16)
    targets = torch.ones(8, dtype=torch.long)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).expand(8, 4)
    care = ab.CARE(model, "feat", rare_classes=[1], mix=1.0, tau=1.0, reduction="mean")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = last = None
    for _ in range(15):
        out = care(images, targets, boxes)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = out.care_loss.item() if first is None else first
        last = out.care_loss.item()
    assert last < first - 0.1, (first, last)


def test_care_errors() -> None:
    model = TinyNet()
    with pytest.raises(ValueError, match=r"rare classes \[5\] are not in the label set: .*0..2"):
        ab.CARE(model, "feat", rare_classes=[1, 5])
    with pytest.raises(ValueError, match="duplicates"):
        ab.CARE(model, "feat", rare_classes=[1, 1])
    with pytest.raises(ValueError, match=r"'layer9' not found in TinyNet; candidates: \['stem'"):
        ab.CARE(model, "layer9", rare_classes=[1])
    with pytest.raises(ValueError, match="unknown outer weighting"):
        ab.CARE(model, "feat", rare_classes=[1], outer="ring")
    with pytest.raises(TypeError, match="nn.Module"):
        ab.CARE(lambda x: x, "feat")  # type: ignore[arg-type]
    anonymous = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    care = ab.CARE(anonymous, "0", rare_classes=[7])  # no num_classes: checked on the logits
    with pytest.raises(ValueError, match=r"rare classes \[7\] are not in the label set"):
        care(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]), torch.tensor([[0.0, 0, 4, 4]] * 2))
    images, targets, boxes, valid = _batch()
    bad = boxes.clone()
    bad[1, 2] = 50.0
    with pytest.raises(ValueError, match="reaches outside"):
        ab.CARE(model, "feat", rare_classes=[2])(images, targets, bad, valid)
    with pytest.warns(UserWarning, match="clipped"):
        ab.CARE(model, "feat", rare_classes=[2], clip_boxes=True)(images, targets, bad, valid)


def test_care_on_timm_default_layer() -> None:
    model = timm.create_model("resnet18", num_classes=3)
    care = ab.CARE(model, rare_classes=[2])
    assert care.layer_name == "layer4" and "layer4" in repr(care)
    images, targets, boxes, valid = _batch()
    out = care(images, targets, boxes, valid)
    assert out.cam.shape == (4, 1, 12, 10) and torch.isfinite(out.loss)


def test_loss_compiles_fullgraph() -> None:
    loss = ab.CAREAttentionLoss()
    inner, outer = ab.box_to_inner_outer(torch.tensor([[1.0, 1.0, 5.0, 4.0]] * 2), (7, 6))
    cam = torch.rand(2, 1, 7, 6)
    valid = torch.tensor([True, False])
    compiled = torch.compile(loss, fullgraph=True)
    ce = torch.tensor(1.5)
    torch.testing.assert_close(
        compiled(cam, inner, outer, valid, ce), loss(cam, inner, outer, valid, ce)
    )
