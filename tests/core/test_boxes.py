"""Lesion boxes: inner/outer maps, boxes from masks and saliency, boxes under augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2

import attnblocks as ab
from attnblocks.boxes import check_boxes
from tests._support.data import shared_subset


def test_inner_outer_uniform_values() -> None:
    boxes = torch.tensor([[2.0, 1.0, 5.0, 3.0]])  # 3 columns x 2 rows = 6 pixels of an 4x8 image
    inner, outer = ab.box_to_inner_outer(boxes, (4, 8))
    assert inner.shape == outer.shape == (1, 1, 4, 8)
    expected = torch.zeros(4, 8)
    expected[1:3, 2:5] = 1 / 6
    torch.testing.assert_close(inner[0, 0], expected)
    torch.testing.assert_close(outer[0, 0], (expected == 0).float() / 26)


def test_inner_outer_distance_values() -> None:
    inner, outer = ab.box_to_inner_outer(torch.tensor([[2.0, 2.0, 4.0, 4.0]]), (8, 8), "distance")
    d = torch.zeros(8, 8)
    for i in range(8):
        for j in range(8):
            cx, cy = j + 0.5, i + 0.5
            dx, dy = max(2 - cx, 0, cx - 4), max(2 - cy, 0, cy - 4)
            d[i, j] = math.hypot(dx, dy)
    torch.testing.assert_close(outer[0, 0], d / d.sum())
    assert outer[0, 0, 2:4, 2:4].abs().sum() == 0 and outer.sum().item() == pytest.approx(1.0)
    assert outer[0, 0, 0, 0] > outer[0, 0, 1, 1] > 0  # farther costs more
    torch.testing.assert_close(inner.sum(), torch.tensor(1.0))


def test_whole_image_box_has_zero_outer_and_invalid_rows_are_zero() -> None:
    boxes = torch.tensor([[0.0, 0.0, 5.0, 3.0], [-9.0, 99.0, 0.0, 0.0]])  # 2nd row is junk
    inner, outer = ab.box_to_inner_outer(boxes, (3, 5), valid=torch.tensor([True, False]))
    torch.testing.assert_close(inner[0], torch.full((1, 3, 5), 1 / 15))
    assert outer.abs().sum() == 0 and inner[1].abs().sum() == 0


def test_pixel_centre_convention_and_float_boxes() -> None:
    inner, _ = ab.box_to_inner_outer(torch.tensor([[0.4, 0.0, 2.6, 1.0]]), (1, 4))
    # centres 0.5, 1.5, 2.5 are inside [0.4, 2.6]; 3.5 is not
    torch.testing.assert_close(inner[0, 0, 0], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]))


def test_bad_boxes() -> None:
    with pytest.raises(ValueError, match=r"reaches outside the 4x6 \(HxW\) image.*clip=True"):
        ab.box_to_inner_outer(torch.tensor([[1.0, 1.0, 7.0, 3.0]]), (4, 6))
    with pytest.warns(UserWarning, match="clipped"):
        inner, _ = ab.box_to_inner_outer(torch.tensor([[-2.0, 1.0, 7.0, 3.0]]), (4, 6), clip=True)
    torch.testing.assert_close(inner[0, 0, 1:3].sum(), torch.tensor(1.0))
    assert inner[0, 0, 1:3].min() > 0  # clipped to the full width
    with pytest.raises(ValueError, match="is empty"):
        ab.box_to_inner_outer(torch.tensor([[3.0, 1.0, 3.0, 3.0]]), (4, 6))
    with pytest.raises(ValueError, match="covers no pixel centre"):
        ab.box_to_inner_outer(torch.tensor([[2.6, 0.0, 3.4, 4.0]]), (4, 6))
    with pytest.raises(ValueError, match="is empty"), pytest.warns(UserWarning):
        ab.box_to_inner_outer(torch.tensor([[7.0, 0.0, 9.0, 4.0]]), (4, 6), clip=True)
    with pytest.raises(ValueError, match="finite"):
        ab.box_to_inner_outer(torch.tensor([[0.0, 0.0, float("nan"), 2.0]]), (4, 6))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        ab.box_to_inner_outer(torch.zeros(4), (4, 6))
    with pytest.raises(ValueError, match="unknown outer weighting 'gauss'"):
        ab.box_to_inner_outer(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), (4, 6), outer="gauss")
    with pytest.raises(ValueError, match=r"size must be \(H, W\)"):
        ab.box_to_inner_outer(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), (0, 6))
    with pytest.raises(ValueError, match="one flag per box"):
        check_boxes(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), (4, 6), torch.tensor([True, True]))


def test_list_registries() -> None:
    assert ab.list_outer_weightings() == ["distance", "uniform"]
    assert ab.list_saliency_methods() == ["spectral_residual"]


def test_boxes_from_masks() -> None:
    masks = torch.zeros(3, 1, 6, 8)
    masks[0, 0, 1:4, 2:7] = 255  # 0/255 masks are accepted
    masks[1, 0, 5, 0] = 255
    boxes, valid = ab.boxes_from_masks(masks)
    torch.testing.assert_close(boxes, torch.tensor([[2.0, 1, 7, 4], [0, 5, 1, 6], [0, 0, 0, 0]]))
    assert valid.tolist() == [True, True, False]
    grown, _ = ab.boxes_from_masks(masks[:, 0], margin=0.2)  # 5x3 box grows by 1.0 and 0.6
    torch.testing.assert_close(grown[0], torch.tensor([1.0, 0.4, 8.0, 4.6]))
    torch.testing.assert_close(grown[1], torch.tensor([0.0, 4.8, 1.2, 6.0]))  # clipped
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        ab.boxes_from_masks(torch.zeros(6, 8))
    with pytest.raises(ValueError, match="margin"):
        ab.boxes_from_masks(masks, margin=-1)


def test_mask_box_covers_exactly_the_mask() -> None:
    mask = torch.zeros(1, 9, 11)
    mask[0, 2:7, 3:9] = 1
    box, _ = ab.boxes_from_masks(mask)
    inner, _ = ab.box_to_inner_outer(box, (9, 11))
    assert torch.equal(inner[0, 0] > 0, mask[0] > 0)


def test_spectral_residual_finds_a_blob() -> None:
    g = torch.Generator().manual_seed(0)
    img = 0.8 + 0.03 * torch.randn(2, 3, 90, 120, generator=g)
    yy, xx = torch.meshgrid(torch.arange(90.0), torch.arange(120.0), indexing="ij")
    disk = ((yy - 30) ** 2 + (xx - 80) ** 2) < 15**2
    img[:, :, disk] = 0.3  # a dark lesion on light skin
    sal = ab.spectral_residual_saliency(img)
    assert sal.shape == (2, 1, 90, 120)
    assert sal.amin() == 0 and sal.amax() == 1
    assert sal[0, 0][disk].mean() > 3 * sal[0, 0][~disk].mean()
    boxes, valid = ab.boxes_from_saliency(img)
    truth = torch.tensor([[65.0, 15.0, 95.0, 45.0]])
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert valid.all() and (centre - torch.tensor([80.0, 30.0])).abs().max() < 3, boxes
    # the blur makes the box generous: it holds the disk and stays well inside the image
    assert (boxes[:, :2] <= truth[:, :2]).all() and (boxes[:, 2:] >= truth[:, 2:]).all()
    assert (box_iou(boxes, truth) > 0.25).all()
    with pytest.raises(ValueError, match="unknown saliency method 'itti'"):
        ab.boxes_from_saliency(img, method="itti")
    with pytest.raises(ValueError, match="threshold"):
        ab.boxes_from_saliency(img, threshold=0)


def test_saliency_boxes_on_real_lesions() -> None:
    from PIL import Image

    root = shared_subset("isic2018_200x150_mini")
    images, masks = [], []
    for path in sorted((root / "ISIC2018_Task3_Training_Input").glob("*.jpg")):
        images.append(torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1) / 255)
        seg = root / "ISIC2018_Task1_Training_GroundTruth" / f"{path.stem}_segmentation.png"
        masks.append(torch.from_numpy(np.array(Image.open(seg))))
    truth, _ = ab.boxes_from_masks(torch.stack(masks))
    boxes, valid = ab.boxes_from_saliency(torch.stack(images).float())
    iou = box_iou(boxes, truth).diag()
    assert valid.all() and iou.median() > 0.45, iou  # 0.51 measured; the image box alone: lower
    whole = torch.tensor([[0.0, 0.0, 200.0, 150.0]])
    assert iou.median() > box_iou(whole, truth).median()


# --- boxes follow geometric augmentation ------------------------------------------------------

_EXACT = {
    "flips": v2.Compose([v2.RandomHorizontalFlip(1.0), v2.RandomVerticalFlip(1.0)]),
    "crop": v2.RandomCrop((17, 19)),
    "crop_pad": v2.RandomCrop((60, 60), pad_if_needed=True),
}
# torchvision rotates boxes about a centre half a pixel away from the image's and resamples masks
# with a floor-based nearest: the box can miss the mask by up to about a pixel.
_APPROX = {
    "rot90": v2.RandomChoice([v2.RandomRotation((90, 90)), v2.RandomRotation((270, 270))]),
    "rotation": v2.RandomRotation(40),
    "rotation_expand": v2.RandomRotation(40, expand=True),
    "affine": v2.RandomAffine(30, translate=(0.1, 0.1), scale=(0.8, 1.2), shear=10),
    "resized_crop_nearest": v2.RandomResizedCrop((33, 27), scale=(0.3, 1.0)),
}


@st.composite
def _lesion(draw: st.DrawFn) -> torch.Tensor:
    h, w = draw(st.integers(20, 50)), draw(st.integers(20, 50))
    y0, x0 = draw(st.integers(0, h - 2)), draw(st.integers(0, w - 2))
    y1, x1 = draw(st.integers(y0 + 1, h)), draw(st.integers(x0 + 1, w))
    seed = draw(st.integers(0, 2**16))
    mask = torch.zeros(h, w, dtype=torch.uint8)
    mask[y0:y1, x0:x1] = 1
    keep = torch.rand(h, w, generator=torch.Generator().manual_seed(seed)) > 0.3
    mask &= keep.to(torch.uint8)
    mask[y0, x0] = 1
    return mask


def _augment(mask: torch.Tensor, transform: v2.Transform) -> tuple[torch.Tensor, torch.Tensor]:
    box, _ = ab.boxes_from_masks(mask[None])
    h, w = mask.shape
    img = tv_tensors.Image(torch.rand(3, h, w))
    bbox = tv_tensors.BoundingBoxes(box, format="XYXY", canvas_size=(h, w))
    _, tmask, tbox = transform(img, tv_tensors.Mask(mask[None]), bbox)
    return tmask, tbox.as_subclass(torch.Tensor)


def _overshoot(tmask: torch.Tensor, tbox: torch.Tensor) -> float:
    """How far (pixels) the transformed mask's pixels reach outside the transformed box."""
    mbox, _ = ab.boxes_from_masks(tmask)
    return torch.cat([tbox[0, :2] - mbox[0, :2], mbox[0, 2:] - tbox[0, 2:]]).max().item()


@pytest.mark.parametrize("name", sorted(_EXACT))
@settings(max_examples=25, deadline=None)
@given(mask=_lesion(), seed=st.integers(0, 2**16))
def test_boxes_follow_exact_transforms(name: str, mask: torch.Tensor, seed: int) -> None:
    torch.manual_seed(seed)
    tmask, tbox = _augment(mask, _EXACT[name])
    if tmask.any():
        assert _overshoot(tmask, tbox) <= 1e-4
        if name == "flips":  # nothing leaves the frame: the moved box is still the tight one
            torch.testing.assert_close(tbox, ab.boxes_from_masks(tmask)[0], atol=1e-4, rtol=0)
        inner, _ = ab.box_to_inner_outer(tbox, tmask.shape[-2:], clip=False)
        assert (inner[0, 0][tmask[0] > 0] > 0).all()  # every mask pixel is inside the box


@pytest.mark.parametrize("name", sorted(_APPROX))
@settings(max_examples=25, deadline=None)
@given(mask=_lesion(), seed=st.integers(0, 2**16))
def test_boxes_follow_resampling_transforms(name: str, mask: torch.Tensor, seed: int) -> None:
    torch.manual_seed(seed)
    tmask, tbox = _augment(mask, _APPROX[name])
    if tmask.any():
        assert _overshoot(tmask, tbox) <= 1.5
