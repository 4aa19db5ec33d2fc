"""Synthetic imbalanced 7-class data in the exact ISIC 2018 task 3 layout (the CARE example's default).

Each image is a lesion-like blob on skin-like background with hairs; the class decides the lesion's
size, outline and colours, and the classes are as imbalanced as HAM10000 (DF and VASC rare):

- **MEL** large, irregular, dark multi-coloured;   **NV** small, round, uniform brown;
- **BCC** pink with dark branching vessels;        **AKIEC** reddish, rough light scale;
- **BKL** tan, waxy, speckled;                      **DF** small, light-brown ring, white centre;
- **VASC** red-purple round lacunae.

Output (``root`` = the returned folder), with ``HAM10000_metadata.csv`` grouping some images as
several pictures of one lesion, so that the lesion-grouped split is exercised::

    ISIC2018_Task3_Training_Input/ISIC_XXXXXXX.jpg
    ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
    ISIC2018_Task1_Training_GroundTruth/ISIC_XXXXXXX_segmentation.png
    HAM10000_metadata.csv

    >>> root = make_synthetic_isic2018(tmp_path / "isic2018", n=200)   # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .layout import ISIC2018_CLASSES
from .synthetic import _draw_hairs, cached_dataset

__all__ = [
    "CLASS_FRACTIONS_2018",
    "default_synthetic2018_root",
    "make_synthetic_isic2018",
]

#: fraction of images per class (HAM10000-like: NV dominates, DF and VASC rare)
CLASS_FRACTIONS_2018 = (0.12, 0.60, 0.06, 0.05, 0.11, 0.03, 0.03)
_RADIUS = {0: (0.26, 0.36), 1: (0.12, 0.18), 2: (0.18, 0.26), 3: (0.2, 0.3), 4: (0.2, 0.28)}
_RADIUS |= {5: (0.1, 0.15), 6: (0.14, 0.22)}
_WOBBLE = {0: 0.22, 1: 0.03, 2: 0.08, 3: 0.15, 4: 0.06, 5: 0.03, 6: 0.1}


def _field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)) / 255.0


def _mask(rng: np.random.Generator, h: int, w: int, cls: int) -> np.ndarray:
    r0 = rng.uniform(*_RADIUS[cls]) * min(h, w) * 1.3
    cy = (0.5 + rng.uniform(-0.15, 0.15)) * h
    cx = (0.5 + rng.uniform(-0.2, 0.2)) * w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = np.arctan2(yy - cy, xx - cx)
    r = np.ones_like(theta)
    for k in range(2, 8):
        r += (
            _WOBBLE[cls] * rng.uniform(0.3, 1.0) / (k / 2) * np.cos(k * theta + rng.uniform(0, 6.3))
        )
    return np.hypot(yy - cy, xx - cx) <= r0 * r


def _body(rng: np.random.Generator, h: int, w: int, cls: int, mask: np.ndarray) -> np.ndarray:
    jitter = rng.uniform(0.88, 1.12)
    noise = rng.normal(0, 5, (h, w, 3))
    if cls == 0:  # MEL
        palette = np.array([[45, 30, 28], [95, 60, 45], [105, 115, 145], [150, 70, 62]]) * jitter
        fields = np.stack([_field(rng, h, w, int(rng.integers(4, 8))) for _ in palette])
        return palette[fields.argmax(0)] + 1.5 * noise
    if cls == 1:  # NV
        return np.array([150, 98, 70]) * jitter + noise
    if cls == 2:  # BCC: pink, dark branching vessels drawn later
        return np.array([215, 140, 145]) * jitter * (0.9 + 0.2 * _field(rng, h, w, 6))[..., None]
    if cls == 3:  # AKIEC: red base, rough white scale
        body = np.array([200, 105, 95]) * jitter + noise
        scale = _field(rng, h, w, max(4, w // 8)) > 0.62
        body[scale] = [235, 215, 205]
        return body
    if cls == 4:  # BKL
        body = (
            np.array([190, 150, 108]) * jitter * (0.8 + 0.35 * _field(rng, h, w, w // 6))[..., None]
        )
        speck = rng.random((h, w))
        body[speck > 0.96] = [235, 225, 200]
        body[speck < 0.03] = [80, 55, 40]
        return body
    if cls == 5:  # DF: light-brown ring, white centre
        ys, xs = np.nonzero(mask)
        cy, cx = ys.mean(), xs.mean()
        rad = np.sqrt(mask.sum() / np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        d = np.hypot(yy - cy, xx - cx) / max(rad, 1.0)
        body = np.broadcast_to(np.array([170, 120, 90]) * jitter, (h, w, 3)).copy() + noise
        body[d < 0.45] = [240, 230, 225]
        return body
    # VASC: red-purple lacunae on dark red
    body = np.array([120, 30, 60]) * jitter + noise
    clods = _field(rng, h, w, max(4, w // 10)) > 0.55
    body[clods] = np.array([190, 40, 70]) * jitter
    return body


def _render(rng: np.random.Generator, cls: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One ``(h, w, 3)`` uint8 image and its boolean lesion mask for class index ``cls``."""
    skin = np.array([226, 178, 150], np.float32) * rng.uniform(0.85, 1.08, 3)
    img = skin * (0.85 + 0.2 * _field(rng, h, w, 4))[..., None] + rng.normal(0, 4, (h, w, 3))
    mask = _mask(rng, h, w, cls)
    body = _body(rng, h, w, cls, mask)
    soft = {0: 2.5, 3: 2.0}.get(cls, 0.8) * h / 96
    alpha = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(soft))
    alpha = np.asarray(alpha, np.float32)[..., None] / 255
    out = Image.fromarray(np.clip(img * (1 - alpha) + body * alpha, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    if cls == 2:  # arborizing vessels inside the lesion
        ys, xs = np.nonzero(mask)
        for _ in range(int(rng.integers(3, 6))):
            k = int(rng.integers(len(ys)))
            p, direction = np.array([xs[k], ys[k]], float), rng.uniform(0, 2 * np.pi)
            pts = []
            for _ in range(5):
                pts.append(tuple(p))
                direction += rng.normal(0, 0.6)
                p = p + h / 18 * np.array([np.cos(direction), np.sin(direction)])
            draw.line(pts, fill=(120, 20, 40), width=max(1, h // 64))
    _draw_hairs(draw, rng, int(rng.integers(0, 5)), min(h, w), h / 8)
    return np.asarray(out), mask


def make_synthetic_isic2018(
    root: str | os.PathLike, n: int = 400, size: int = 96, seed: int = 0
) -> Path:
    """Write ``n`` synthetic images (``size`` high, ``4/3 * size`` wide) into the new folder ``root``.

    Every class gets at least 4 images (so that a lesion-grouped split can place one in each of
    train/val/test); about a fifth of the lesions are photographed twice. The same seed writes
    byte-identical files.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"make_synthetic_isic2018: {root} exists and is not empty")
    if n < 4 * len(ISIC2018_CLASSES):
        raise ValueError(f"n must be >= {4 * len(ISIC2018_CLASSES)} (4 images per class), got {n}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    h, w = size, round(size * 4 / 3)
    rng = np.random.default_rng(seed)
    counts = np.maximum(4, np.floor(np.asarray(CLASS_FRACTIONS_2018) * n)).astype(int)
    counts[1] += n - counts.sum()  # NV takes the rest
    classes = rng.permutation(np.repeat(np.arange(len(ISIC2018_CLASSES)), counts))
    dirs = {
        "img": root / "ISIC2018_Task3_Training_Input",
        "gt": root / "ISIC2018_Task3_Training_GroundTruth",
        "seg": root / "ISIC2018_Task1_Training_GroundTruth",
    }
    for d in dirs.values():
        d.mkdir(parents=True)
    labels = ["image," + ",".join(ISIC2018_CLASSES)]
    meta = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    lesion, previous = 0, -1
    for k, cls in enumerate(classes):
        image_id = f"ISIC_{24306 + k:07d}"
        if not (previous == cls and rng.random() < 0.4):  # else: a second image of the lesion
            lesion += 1
        previous = cls
        img, mask = _render(rng, int(cls), h, w)
        Image.fromarray(img).save(dirs["img"] / f"{image_id}.jpg", quality=90)
        Image.fromarray(mask.astype(np.uint8) * 255).save(
            dirs["seg"] / f"{image_id}_segmentation.png"
        )
        labels.append(image_id + "," + ",".join(f"{float(c == cls):.1f}" for c in range(7)))
        meta.append(
            f"HAM_{lesion:07d},{image_id},{ISIC2018_CLASSES[cls].lower()},synthetic,50.0,,back"
        )
    (dirs["gt"] / "ISIC2018_Task3_Training_GroundTruth.csv").write_text("\n".join(labels) + "\n")
    (root / "HAM10000_metadata.csv").write_text("\n".join(meta) + "\n")
    return root


def default_synthetic2018_root(
    n: int = 400, size: int = 96, seed: int = 0, cache: str | os.PathLike | None = None
) -> Path:
    """The synthetic ISIC 2018 data for these settings, generated once into the cache and reused.

    Cache folder: ``cache`` or ``$ATTNBLOCKS_CACHE_DIR`` (else
    ``$ATTNBLOCKS_CACHE``, else ``~/.cache/attnblocks``), then
    ``synthetic/isic2018-<settings hash>``; built in a temporary folder and renamed into place.
    """
    return cached_dataset(
        "isic2018",
        f"{n}-{size}-{seed}-v1",
        lambda tmp: make_synthetic_isic2018(tmp, n, size, seed),
        cache,
    )
