"""ARL / AttnMel transforms: geometry, image-mask alignment, 9 test views, gray world, stats."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from examples.isic import (
    ARL_SCALES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ARLPatchAugment,
    CentralPatchCrop,
    CentralSquareCrop,
    GrayWorld,
    NineViews,
    RandomRot90,
    arl_test_transform,
    arl_train_transform,
    attnmel_eval_transform,
    attnmel_train_transform,
    compute_mean_std,
    gray_world,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _blocky_pair(h: int, w: int, seed: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """A mask of a few large rectangles, and an image that is 255 exactly on the mask."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, h, w, dtype=torch.uint8)
    for _ in range(3):
        t, le = (
            int(torch.randint(h // 2, (1,), generator=g)),
            int(torch.randint(w // 2, (1,), generator=g)),
        )
        mask[:, t : t + h // 3 + 1, le : le + w // 3 + 1] = 1
    image = (mask * 255).expand(3, h, w).clone()
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


def _coords(h: int, w: int) -> tv_tensors.Image:
    """Float image whose channels hold the row and column of each pixel centre."""
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    return tv_tensors.Image(torch.stack([rows, cols, torch.zeros(h, w)]))


TRANSFORMS = {
    "arl_train": lambda s: arl_train_transform(s, mean=None),
    "arl_train_chain": lambda s: arl_train_transform(s, mean=None, fused=False),
    "arl_train_cc": lambda s: arl_train_transform(s, mean=None, color_constancy=True),
    "arl_test": lambda s: arl_test_transform(s, mean=None),
    "arl_test_random": lambda s: arl_test_transform(s, mode="random", mean=None),
    "attnmel_train": lambda s: attnmel_train_transform(s, mean=None),
    "attnmel_eval": lambda s: attnmel_eval_transform(s, mean=None),
}


@settings(max_examples=12, deadline=None)
@given(
    name=st.sampled_from(sorted(TRANSFORMS)),
    h=st.integers(41, 130),
    w=st.integers(41, 130),
    size=st.sampled_from([24, 33, 48]),
    seed=st.integers(0, 2**16),
)
def test_mask_stays_aligned_with_image(name, h, w, size, seed):
    torch.manual_seed(seed)
    image, mask = _blocky_pair(h, w, seed)
    out_img, out_mask = TRANSFORMS[name](size)(image, mask)
    assert isinstance(out_mask, tv_tensors.Mask) and out_mask.dtype == torch.float32
    assert out_img.shape[-2:] == out_mask.shape[-2:] == (size, size)
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
    # the image is bright exactly where the mask is: after interpolation they disagree on
    # boundary pixels only
    agree = ((out_img.mean(-3, keepdim=True) > 0.5) == (out_mask > 0.5)).float().mean()
    assert agree > 0.9, float(agree)


def test_normalization_and_dtype():
    image, mask = _blocky_pair(64, 80, 0)
    raw_img, _ = attnmel_eval_transform(32, mean=None)(image, mask)
    norm_img, norm_mask = attnmel_eval_transform(32)(image, mask)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(norm_img, (raw_img - mean) / std)
    assert set(norm_mask.unique().tolist()) <= {0.0, 1.0}


def test_central_patch_crop_stays_in_the_central_window():
    h, w = 100, 150
    image = _coords(h, w)
    crop = CentralPatchCrop(size=20, scales=(0.2,), central_fraction=0.8)
    torch.manual_seed(0)
    for _ in range(30):
        params = crop.make_params([image])
        assert (params["height"], params["width"]) == (20, 30)
        assert 10 <= params["top"] and params["top"] + 20 <= 90
        assert 15 <= params["left"] and params["left"] + 30 <= 135
    # the largest scale is the centre crop itself
    big = CentralPatchCrop(size=20, scales=(0.8,), central_fraction=0.8)
    assert big.make_params([image]) == {"top": 10, "left": 15, "height": 80, "width": 120}
    # scales are all used, output is resized to size x size
    seen = {CentralPatchCrop(16, ARL_SCALES).make_params([image])["height"] for _ in range(80)}
    assert seen == {20, 40, 60, 80}
    out = crop(image)
    assert out.shape == (3, 20, 20)
    with pytest.raises(ValueError, match="scales"):
        CentralPatchCrop(scales=(0.0, 0.5))


def test_nine_views_deterministic_boxes_and_content():
    views = NineViews(size=16)
    boxes = views.boxes(100, 200)
    assert boxes[0] == (0, 0, 100, 200)
    assert boxes[1:5] == [(40, 80, 20, 40), (30, 60, 40, 80), (20, 40, 60, 120), (10, 20, 80, 160)]
    assert boxes[5:] == [(40, 90, 20, 20), (30, 80, 40, 40), (20, 70, 60, 60), (10, 60, 80, 80)]
    image = _coords(100, 200)
    out = views(image)
    assert out.shape == (9, 3, 16, 16)
    torch.testing.assert_close(out, views(image))  # deterministic
    # every view is centred on the image centre
    centre = out[:, :2].mean(dim=(-2, -1))
    torch.testing.assert_close(centre, torch.tensor([[49.5, 99.5]]).expand(9, 2), atol=0.6, rtol=0)
    torch.testing.assert_close(
        out[0], F.resize(image, [16, 16], antialias=True).as_subclass(torch.Tensor)
    )
    mask = tv_tensors.Mask(torch.ones(1, 100, 200, dtype=torch.uint8))
    img9, mask9 = arl_test_transform(16)(
        tv_tensors.Image(torch.zeros(3, 100, 200, dtype=torch.uint8)), mask
    )
    assert img9.shape == (9, 3, 16, 16) and mask9.shape == (9, 1, 16, 16)
    with pytest.raises(ValueError, match="mode"):
        NineViews(mode="grid")


def test_nine_views_random_is_seeded():
    image = _coords(60, 90)
    views = NineViews(size=12, mode="random")
    torch.manual_seed(1)
    a = views(image)
    torch.manual_seed(1)
    b = views(image)
    torch.manual_seed(2)
    c = views(image)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert len({tuple(v[:2, 0, 0].tolist()) for v in a}) > 1  # 9 different patches


def test_attnmel_eval_is_centre_crop_resize_crop():
    image = _coords(90, 120)
    out = attnmel_eval_transform(48, mean=None)(image)
    side = round(0.8 * 90)
    ref = F.center_crop(image, [side, side])
    ref = F.resize(ref, [55, 55], antialias=True)  # round(48 * 256 / 224) = 55
    ref = F.center_crop(ref, [48, 48])
    torch.testing.assert_close(out.as_subclass(torch.Tensor), ref.as_subclass(torch.Tensor))
    assert attnmel_train_transform(48, mean=None)(image).shape == (3, 48, 48)
    assert attnmel_train_transform(mean=None)(image).shape == (3, 224, 224)


def test_central_square_crop_and_rot90():
    image = _coords(50, 70)
    out = CentralSquareCrop(0.8)(image)
    assert out.shape == (3, 40, 40) and out[0, 0, 0] == 5 and out[1, 0, 0] == 15
    rot = RandomRot90()
    mask = tv_tensors.Mask(torch.arange(12, dtype=torch.uint8).reshape(1, 3, 4))
    img = tv_tensors.Image(mask.expand(3, 3, 4).clone())
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        ri, rm = rot(img, mask)
        k = {(3, 4): 0, (4, 3): 1}[tuple(rm.shape[-2:])]
        assert any(torch.equal(rm, torch.rot90(mask, kk, (-2, -1))) for kk in (k, k + 2))
        assert torch.equal(ri[0], rm[0])
        seen.add(int(rm[0, 0, 0]))
    assert len(seen) == 4  # all four rotations occur


def test_gray_world():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 9, generator=g) * torch.tensor([0.9, 0.5, 0.3])[:, None, None]
    y = gray_world(x)
    means = y.mean(dim=(-2, -1))
    torch.testing.assert_close(means, means.mean(1, keepdim=True).expand(2, 3))
    torch.testing.assert_close(means.mean(1), x.mean(dim=(1, 2, 3)))  # overall brightness kept
    u8 = (x[0] * 255).round().to(torch.uint8)
    out = gray_world(u8)
    assert out.dtype == torch.uint8
    assert (out.float().mean(dim=(-2, -1)) - out.float().mean()).abs().max() < 1.5
    mask = tv_tensors.Mask(torch.ones(1, 8, 9))
    img, m = GrayWorld()(tv_tensors.Image(x[0]), mask)
    torch.testing.assert_close(img.as_subclass(torch.Tensor), y[0])
    assert m is mask or torch.equal(m, mask)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        gray_world(torch.rand(4, 8, 8))


def test_compute_mean_std():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 5 + k, 7, generator=g) for k in range(4)]
    mean, std = compute_mean_std([{"image": im} for im in images])
    pixels = torch.cat([im.flatten(1) for im in images], 1).double()
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), pixels.mean(1))
    torch.testing.assert_close(
        torch.tensor(std, dtype=torch.float64), pixels.std(1, unbiased=False)
    )
    m8, _ = compute_mean_std(
        [((im * 255).round().to(torch.uint8), 0) for im in images], max_images=2
    )
    ref = torch.cat([(im * 255).round().flatten(1) / 255 for im in images[:2]], 1).double().mean(1)
    torch.testing.assert_close(torch.tensor(m8, dtype=torch.float64), ref)
    with pytest.raises(ValueError, match="no images"):
        compute_mean_std([])
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        compute_mean_std([torch.rand(1, 4, 4)])


@pytest.mark.parametrize(
    "box", [(20, 30, 72, 96), (40, 60, 30, 40)], ids=["shrink", "enlarge"]
)  # patch larger / smaller than the output
@pytest.mark.parametrize(
    "angle,zoom,hflip,vflip",
    [(8.0, 1.07, False, False), (-9.5, 0.92, True, True), (3.0, 1.0, True, False)],
)
def test_arl_patch_augment_equals_the_v2_chain(box, angle, zoom, hflip, vflip):
    h, w = 120, 160
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = tv_tensors.Image(
        torch.stack([(yy * 2) % 256, (xx * 3 // 2) % 256, (yy + xx) % 256]).to(torch.uint8)
    )
    mask = tv_tensors.Mask(((yy - 60) ** 2 + (xx - 80) ** 2 < 900).to(torch.uint8)[None])
    aug = ARLPatchAugment(48)
    params = {
        "box": dict(zip(("top", "left", "height", "width"), box, strict=True)),
        "theta": aug.theta(angle, zoom, hflip, vflip),
    }
    for inpt in (image, mask):
        out = aug.transform(inpt, params)
        ref = F.resized_crop(inpt, *box, [48, 48], antialias=True)
        ref = F.affine(
            ref,
            angle=angle,
            translate=[0, 0],
            scale=zoom,
            shear=[0.0, 0.0],
            interpolation=F.InterpolationMode.BILINEAR,
        )
        ref = F.vertical_flip(ref) if vflip else ref
        ref = F.horizontal_flip(ref) if hflip else ref
        assert type(out) is type(inpt) and out.dtype == inpt.dtype and out.shape == ref.shape
        diff = (out.float() - ref.float()).abs()
        if inpt is mask:  # nearest neighbours may differ on the boundary only
            assert diff.mean() < 0.04, float(diff.mean())
        elif box[2] > 48:  # shrink, then one resampling: the same numbers as the chain
            assert diff.max() == 0, float(diff.max())
        else:  # the chain interpolates twice (resize, rotate), the fused path once
            assert diff.mean() < 1.5, float(diff.mean())


def test_fused_and_chained_arl_transforms_agree_in_distribution():
    image, mask = _blocky_pair(90, 120, 3)
    outs = {}
    for fused in (True, False):
        torch.manual_seed(0)
        tf = arl_train_transform(32, mean=None, fused=fused)
        outs[fused] = torch.stack([tf(image, mask)[1].mean() for _ in range(100)])
    assert abs(outs[True].mean() - outs[False].mean()) < 0.03  # same lesion share on average
    with pytest.raises(ValueError, match="zoom"):
        ARLPatchAugment(zoom=(1.1, 0.9))
