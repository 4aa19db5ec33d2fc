"""Focal losses (softmax and sigmoid) and the Dice attention regularizer: the numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

import attnblocks as ab

# --- focal (softmax) ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gamma0_alpha_none_is_cross_entropy_values_and_grads(seed, reduction):
    torch.manual_seed(seed)
    logits = (3 * torch.randn(16, 5, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, 5, (16,))
    fl = ab.focal_loss(logits, target, gamma=0.0, reduction=reduction)
    (g_fl,) = torch.autograd.grad(fl.sum(), logits)
    ce = F.cross_entropy(logits, target, reduction=reduction)
    (g_ce,) = torch.autograd.grad(ce.sum(), logits)
    torch.testing.assert_close(fl.double(), ce, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_fl, g_ce, rtol=1e-5, atol=1e-7)


def test_gamma0_is_cross_entropy_with_spatial_dims_and_ignore_index():
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0, :3] = -100
    torch.testing.assert_close(
        ab.focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target)
    )
    torch.testing.assert_close(
        ab.FocalLoss(gamma=0.0, ignore_index=2)(logits, target.clamp_min(0)),
        F.cross_entropy(logits, target.clamp_min(0), ignore_index=2),
    )


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 5.0])
def test_focal_le_cross_entropy_and_matches_formula(gamma):
    logits = 4 * torch.randn(64, 4)
    target = torch.randint(0, 4, (64,))
    fl = ab.focal_loss(logits, target, gamma=gamma, reduction="none")
    ce = F.cross_entropy(logits, target, reduction="none")
    assert bool((fl <= ce + 1e-7).all())
    p_t = torch.softmax(logits, 1).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(fl, (1 - p_t) ** gamma * ce, rtol=1e-5, atol=1e-6)


def test_alpha_weights_are_outside_p_t():
    logits = torch.randn(32, 3)
    target = torch.randint(0, 3, (32,))
    alpha = torch.tensor([0.2, 0.5, 1.3])
    plain = ab.focal_loss(logits, target, gamma=2.0, reduction="none")
    weighted = ab.focal_loss(logits, target, gamma=2.0, alpha=alpha, reduction="none")
    torch.testing.assert_close(weighted, alpha[target] * plain)
    # mean: over the (non-ignored) elements, not normalised by the weights
    torch.testing.assert_close(
        ab.FocalLoss(alpha=alpha.tolist())(logits, target), (alpha[target] * plain).mean()
    )
    # a float alpha is the binary convention: class 1 -> alpha, class 0 -> 1 - alpha
    logits2, target2 = torch.randn(10, 2), torch.randint(0, 2, (10,))
    torch.testing.assert_close(
        ab.focal_loss(logits2, target2, alpha=0.25, reduction="none"),
        ab.focal_loss(logits2, target2, alpha=[0.75, 0.25], reduction="none"),
    )


def test_focal_extreme_logits_and_fp16_are_finite():
    logits = torch.tensor([[1e4, -1e4], [-1e4, 1e4], [80.0, -80.0], [0.0, 0.0]]).requires_grad_()
    target = torch.tensor([0, 0, 1, 1])
    for gamma in (0.0, 0.5, 2.0):
        loss = ab.focal_loss(logits, target, gamma=gamma, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert loss[0].item() == 0.0 and loss[1].item() == pytest.approx(2e4 * 1.0, rel=1e-6)
    half = (torch.randn(8, 3) * 30).half().requires_grad_()
    t = torch.randint(0, 3, (8,))
    loss = ab.FocalLoss()(half, t)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(half.grad).all()
    torch.testing.assert_close(loss, ab.FocalLoss()(half.detach().float(), t))


def test_focal_all_ignored_gives_zero():
    logits = torch.randn(3, 2, requires_grad=True)
    loss = ab.focal_loss(logits, torch.full((3,), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros(3, 2))


def test_focal_bad_input():
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"target values must lie in \[0, 3\).*\[3\]"):
        ab.focal_loss(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"target shape \(3,\) does not match input \(4, 3\)"):
        ab.focal_loss(logits, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match=r"class indices"):
        ab.focal_loss(logits, torch.zeros(4))
    with pytest.raises(ValueError, match=r"alpha has 2 weights, expected one per class \(3\)"):
        ab.focal_loss(logits, torch.tensor([0, 1, 2, 0]), alpha=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"float alpha .* 2 classes"):
        ab.focal_loss(logits, torch.tensor([0, 1, 2, 0]), alpha=0.25)
    with pytest.raises(ValueError, match=r"FocalLoss: gamma must be a finite number >= 0, got -1"):
        ab.FocalLoss(gamma=-1)
    with pytest.raises(ValueError, match=r"reduction must be one of .* got 'avg'"):
        ab.FocalLoss(reduction="avg")
    with pytest.raises(ValueError, match=r"\(N, C, \.\.\.\) logits, got shape \(4,\)"):
        ab.focal_loss(torch.randn(4), torch.tensor([0, 1, 0, 1]))


# --- focal (sigmoid) ------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.25, 0.9, -1.0])
@pytest.mark.parametrize("gamma", [0.0, 1.5, 2.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_focal_matches_torchvision(alpha, gamma, reduction):
    x = (5 * torch.randn(6, 7, dtype=torch.float64)).requires_grad_()
    t = (torch.rand(6, 7) > 0.6).double()
    ours = ab.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction=reduction)
    ref = torchvision.ops.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction=reduction)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-7)


def test_sigmoid_focal_alpha_none_and_extremes():
    x = torch.tensor([1e4, -1e4, 50.0, -50.0, 0.0], requires_grad=True)
    t = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    loss = ab.sigmoid_focal_loss(x, t, alpha=None, reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(
        loss, torchvision.ops.sigmoid_focal_loss(x.detach(), t, alpha=-1, reduction="none")
    )
    half = torch.randn(10).half()
    out = ab.sigmoid_focal_loss(half, torch.ones(10), reduction="mean")
    assert out.dtype == torch.float32 and torch.isfinite(out)
    with pytest.raises(ValueError, match=r"targets shape \(3,\) does not match inputs \(4,\)"):
        ab.sigmoid_focal_loss(torch.randn(4), torch.ones(3))


# --- Dice regularizer -----------------------------------------------------------------------------


def test_soft_dice_batch_formula_on_hand_made_tensors():
    a = torch.tensor([[[[0.5, 1.0], [0.0, 0.25]]], [[[1.0, 0.0], [0.0, 0.0]]]])
    m = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 1.0]]]])
    # batch: 2 * (0.5 + 1.0) / (1.75 + 1.0 + 2 + 0) = 3 / 5.75
    assert ab.soft_dice(a, m, eps=0).item() == pytest.approx(3 / 5.75)
    # per image: 2*1.5/3.75 = 0.8 and 0/2 = 0 -> mean 0.4
    assert ab.soft_dice(a, m, reduction="image", eps=0).item() == pytest.approx(0.4)
    reg = ab.DiceAttentionRegularizer(weights=(0.5,), eps=0)
    assert reg([a], m).item() == pytest.approx(0.5 * (1 - 3 / 5.75))
    reg_img = ab.DiceAttentionRegularizer(weights=(1.0,), reduction="image", eps=0)
    assert reg_img(a, m).item() == pytest.approx(0.6)


def test_masks_are_average_pooled_to_each_map_size():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :6] = 1.0  # pooled to 4x4: rows 0-1 = [1, 1, 1, 0]
    a4 = torch.rand(1, 1, 4, 4)
    a2 = torch.rand(1, 1, 2, 2)
    reg = ab.DiceAttentionRegularizer(weights=(1.0, 2.0), eps=0)
    pooled4 = F.avg_pool2d(mask, 2)
    pooled2 = F.avg_pool2d(mask, 4)
    assert pooled4[0, 0, 0].tolist() == [1.0, 1.0, 1.0, 0.0]

    def dice(a, m):
        return 2 * (a * m).sum() / (a.sum() + m.sum())

    expected = (1 - dice(a4, pooled4)) + 2 * (1 - dice(a2, pooled2))
    torch.testing.assert_close(reg([a4, a2], mask), expected)


def test_map_equal_to_binary_mask_gives_zero_loss():
    mask = torch.zeros(3, 1, 16, 16, dtype=torch.bool)
    mask[:, :, 4:12, 2:9] = True
    maps = [mask.float(), F.avg_pool2d(mask.float(), 2)]
    # the second map equals its pooled mask but is soft at the border: Dice < 1 there by design
    loss = ab.DiceAttentionRegularizer(weights=(1.0, 0.0))(maps, mask)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "encode",
    [
        lambda m: m,
        lambda m: m.float(),
        lambda m: m.to(torch.uint8),
        lambda m: m.to(torch.uint8) * 255,
        lambda m: m.squeeze(1),
        lambda m: (m.to(torch.uint8) * 255).squeeze(1),
    ],
    ids=["bool", "float01", "uint8_01", "uint8_0255", "bool_NHW", "uint8_0255_NHW"],
)
def test_mask_encodings_agree(encode):
    mask = torch.rand(2, 1, 12, 10) > 0.5
    maps = [torch.rand(2, 1, 6, 5), torch.rand(2, 1, 3, 5)]
    reg = ab.DiceAttentionRegularizer()
    torch.testing.assert_close(reg(maps, encode(mask)), reg(maps, mask.float()))


def test_valid_excludes_samples_and_no_valid_gives_zero_with_grad():
    maps = [torch.rand(3, 1, 4, 4, requires_grad=True), torch.rand(3, 1, 2, 2, requires_grad=True)]
    masks = torch.rand(3, 8, 8) > 0.5
    reg = ab.DiceAttentionRegularizer(weights=(1.0, 1.0))
    valid = torch.tensor([True, False, True])
    keep = [0, 2]
    expected = reg([m[keep] for m in maps], masks[keep])
    torch.testing.assert_close(reg(maps, masks, valid=valid), expected)
    # an invalid sample's mask and map do not matter at all
    other = masks.clone()
    other[1] = ~other[1]
    torch.testing.assert_close(reg(maps, other, valid=valid), expected)
    for reduction in ("batch", "image"):
        reg_r = ab.DiceAttentionRegularizer(weights=(1.0, 1.0), reduction=reduction)
        zero = reg_r(maps, masks, valid=torch.zeros(3, dtype=torch.bool))
        assert zero.item() == 0.0 and zero.requires_grad
        grads = torch.autograd.grad(zero, maps)
        assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
        # a batch of 0 samples is the same case: 0 with a graph, not 1 - 0
        none = [m[:0] for m in maps]
        empty = reg_r(none, masks[:0])
        assert empty.item() == 0.0 and empty.requires_grad
        empty.backward()
    # a NaN map of an excluded sample changes nothing
    broken = [m.detach().clone() for m in maps]
    for m in broken:
        m[1] = float("nan")
    torch.testing.assert_close(reg(broken, masks, valid=valid), expected)


def test_empty_masks_are_finite():
    maps = [torch.rand(2, 1, 4, 4, requires_grad=True)]
    loss = ab.DiceAttentionRegularizer(weights=(1.0,))(maps, torch.zeros(2, 8, 8))
    (grad,) = torch.autograd.grad(loss, maps)
    assert loss.item() == pytest.approx(1.0)  # Dice 0: nothing overlaps
    assert torch.isfinite(grad).all()
    zero_maps = [torch.zeros(2, 1, 4, 4, requires_grad=True)]
    loss = ab.DiceAttentionRegularizer(weights=(1.0,))(zero_maps, torch.zeros(2, 8, 8))
    (grad,) = torch.autograd.grad(loss, zero_maps)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_dice_bad_input():
    reg = ab.DiceAttentionRegularizer()
    maps = [torch.rand(2, 1, 4, 4), torch.rand(2, 1, 2, 2)]
    with pytest.raises(ValueError, match=r"got 1 attention maps for 2 weights"):
        reg(maps[:1], torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"uint8 masks must hold \{0, 1\} or \{0, 255\}"):
        reg(maps, torch.full((2, 8, 8), 128, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"float masks must lie in \[0, 1\].*max 255"):
        reg(maps, torch.full((2, 8, 8), 255.0))
    with pytest.raises(ValueError, match=r"N = 2 .* got shape \(3, 8, 8\)"):
        reg(maps, torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"map 1 must be \(N, 1, h, w\), got \(2, 3, 2, 2\)"):
        reg([maps[0], torch.rand(2, 3, 2, 2)], torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"one flag per sample \(2\), got shape \(3,\)"):
        reg(maps, torch.zeros(2, 8, 8), valid=torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"bool, uint8 or float, got dtype torch.int64"):
        reg(maps, torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"weights must be one or more finite numbers >= 0, got \(-1.0,\)"
    ):
        ab.DiceAttentionRegularizer(weights=(-1.0,))
    with pytest.raises(ValueError, match=r"reduction must be one of"):
        ab.DiceAttentionRegularizer(reduction="mean")


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 4),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    scale=st.integers(1, 4),
    encoding=st.sampled_from(["bool", "float", "uint8", "uint8_255"]),
    reduction=st.sampled_from(["batch", "image"]),
    seed=st.integers(0, 2**16),
)
def test_dice_properties_random_shapes_and_encodings(n, h, w, scale, encoding, reduction, seed):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, 1, h * scale, w * scale, generator=gen) > 0.5
    encoded = {
        "bool": mask,
        "float": mask.float(),
        "uint8": mask.to(torch.uint8),
        "uint8_255": mask.to(torch.uint8) * 255,
    }[encoding]
    maps = [torch.rand(n, 1, h, w, generator=gen, requires_grad=True)]
    valid = torch.rand(n, generator=gen) > 0.3
    reg = ab.DiceAttentionRegularizer(weights=(1.0,), reduction=reduction)
    loss = reg(maps, encoded, valid=valid)
    (grad,) = torch.autograd.grad(loss, maps)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert -1e-6 <= loss.item() <= 1.0 + 1e-6
    if not bool(valid.any()):
        assert loss.item() == 0.0
    # the formula on the valid samples, by hand
    if bool(valid.any()):
        a, m = maps[0].detach()[valid], F.adaptive_avg_pool2d(mask.float(), (h, w))[valid]
        if reduction == "batch":
            dice = 2 * (a * m).sum() / ((a + m).sum() + reg.eps)
        else:
            dice = (2 * (a * m).sum((1, 2, 3)) / ((a + m).sum((1, 2, 3)) + reg.eps)).mean()
        assert loss.item() == pytest.approx(1 - dice.item(), abs=1e-5)
    # a map equal to a binary mask at its own size scores ~0 wherever a valid mask is non-empty
    if scale == 1 and bool(valid.any()) and bool(mask[valid].flatten(1).any(1).all()):
        perfect = reg([mask.float()], encoded, valid=valid)
        assert perfect.item() == pytest.approx(0.0, abs=1e-5)


def test_real_isic_masks_through_the_attnmel_loss():
    import numpy as np
    from PIL import Image

    from tests._support.data import shared_subset

    root = shared_subset("isic2017_256_mini")
    mask_files = sorted((root / "ISIC-2017_Training_Part1_GroundTruth").glob("*.png"))[:4]
    assert mask_files, f"no masks under {root}"
    masks = torch.stack([torch.from_numpy(np.array(Image.open(f))) for f in mask_files])
    assert masks.dtype == torch.uint8 and set(masks.unique().tolist()) <= {0, 255}
    reg = ab.DiceAttentionRegularizer(weights=(1.0, 1.0))
    pooled = [F.adaptive_avg_pool2d(masks[:, None].float() / 255, s) for s in (32, 16)]
    in_place = reg([(p > 0.5).float() for p in pooled], masks)
    shifted = reg([(p.roll(8 * i + 6, dims=-1) > 0.5).float() for i, p in enumerate(pooled)], masks)
    flipped = reg([(p.flip(-1).flip(-2) > 0.5).float() for p in pooled], masks)
    assert in_place.item() < 0.1 < shifted.item() and in_place.item() < flipped.item()
    torch.testing.assert_close(reg(pooled, masks > 127), reg(pooled, masks))
    torch.testing.assert_close(reg(pooled, masks.float() / 255), reg(pooled, masks))


def test_losses_compile_fullgraph_with_the_same_numbers():
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 1, -100, 0])
    focal = ab.FocalLoss(alpha=[1.0, 2.0, 0.5])
    compiled = torch.compile(focal, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(logits, target), focal(logits, target))
    reg = ab.DiceAttentionRegularizer()
    compiled_reg = torch.compile(reg, fullgraph=True, backend="eager")
    maps = [torch.rand(2, 1, 8, 8), torch.rand(2, 1, 4, 4)]
    mask = torch.rand(2, 32, 32) > 0.5
    valid = torch.tensor([True, False])
    for encoded in (mask, mask.to(torch.uint8), mask.to(torch.uint8) * 255, mask.float()):
        torch.testing.assert_close(compiled_reg(maps, encoded, valid), reg(maps, mask, valid))


def test_uint8_mask_mixing_encodings_is_rejected():
    mask = torch.zeros(1, 8, 8, dtype=torch.uint8)
    mask[0, 0, 0], mask[0, 1, 1] = 1, 255
    with pytest.raises(ValueError, match=r"\{0, 1\} or \{0, 255\}, got values \[0, 1, 255\]"):
        ab.DiceAttentionRegularizer(weights=(1.0,))([torch.rand(1, 1, 4, 4)], mask)
