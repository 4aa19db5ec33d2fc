"""Synthetic dermoscopy-like data written in the exact ISIC 2017 layout.

For the examples' embedded default (no ``--data-root``) and for tests. Each image is a lesion-like
blob on a skin-like background with hair and air-bubble artefacts; the class decides the lesion's
appearance, so a small CNN learns it:

- **melanoma**: large, irregular outline (strong low-order radial harmonics), soft border, dark
  multi-coloured body (black, dark brown, blue-grey and reddish regions);
- **seborrheic keratosis**: medium, well circumscribed (sharp edge), light tan "waxy" body with a
  bright speckled texture (milia-like cysts) and dark pores;
- **nevus**: small, round, uniform medium brown.

Colours, sizes, positions and artefacts are jittered per image so that no single pixel statistic
gives the label away. Output (``root`` = the returned folder)::

    ISIC-2017_{Training,Validation,Test_v2}_Data/ISIC_XXXXXXX.jpg      (+ two *_superpixels.png)
    ISIC-2017_{Training,Validation,Test_v2}_Part1_GroundTruth/ISIC_XXXXXXX_segmentation.png
    ISIC-2017_{Training,Validation,Test_v2}_Part3_GroundTruth.csv      image_id,melanoma,...

    >>> root = make_synthetic_isic2017(tmp_path / "isic2017", n_train=40, size=96)  # doctest: +SKIP
    >>> ISIC2017Dataset(root, "train", task="3class").class_counts()
    {'nevus': 18, 'melanoma': 12, 'seborrheic_keratosis': 10}
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ...run.files import _umask
from .cache import default_cache_dir
from .layout import ISIC2017_PREFIX

__all__ = [
    "CLASS_FRACTIONS",
    "cached_dataset",
    "default_synthetic_root",
    "make_synthetic_isic2017",
    "render_lesion",
]

#: fraction of (nevus, melanoma, seborrheic keratosis) images per split
CLASS_FRACTIONS = (0.45, 0.30, 0.25)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1], ``(size, size)``."""
    coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
    field = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(field, dtype=np.float32) / 255.0


def _lesion_mask(rng: np.random.Generator, size: int, cls: int) -> np.ndarray:
    radius = {0: (0.12, 0.24), 1: (0.18, 0.36), 2: (0.16, 0.3)}[cls]
    wobble = rng.uniform(*{0: (0.0, 0.1), 1: (0.06, 0.24), 2: (0.02, 0.1)}[cls])
    r0 = rng.uniform(*radius) * size
    cy, cx = (0.5 + rng.uniform(-0.08, 0.08, 2)) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = np.arctan2(yy - cy, xx - cx)
    r = 1 + 0.1 * np.cos(2 * theta + rng.uniform(0, 6.3))  # mildly oval
    for k in range(2, 8):
        r += wobble * rng.uniform(0.3, 1.0) / (k / 2) * np.cos(k * theta + rng.uniform(0, 6.3))
    return np.hypot(yy - cy, xx - cx) <= r0 * r


def _draw_hairs(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, count: int, extent: float, step: float
) -> None:
    """``count`` hairs: dark, gently curved 5-segment strokes of ``step``-long segments, each
    starting at a random point of ``[0, extent)^2``."""
    for _ in range(count):
        p, direction = rng.uniform(0, extent, 2), rng.uniform(0, 2 * np.pi)
        pts = []
        for _ in range(6):
            pts.append(tuple(p))
            direction += rng.normal(0, 0.25)
            p = p + step * np.array([np.cos(direction), np.sin(direction)])
        draw.line(pts, fill=tuple(int(v) for v in rng.integers(20, 60, 3)), width=1)


def render_lesion(rng: np.random.Generator, cls: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One ``(size, size, 3)`` uint8 image and its boolean lesion mask; ``cls`` 0/1/2.

    The class-conditional ranges of size, irregularity, darkness and colour overlap, so that the
    task is learnable but not trivial.
    """
    skin = np.array([226, 178, 150], np.float32) * rng.uniform(0.85, 1.08, 3)
    shade = 0.85 + 0.2 * _smooth_field(rng, size, 4)
    img = skin * shade[..., None] + rng.normal(0, 4, (size, size, 3))
    mask = _lesion_mask(rng, size, cls)
    body = np.zeros((size, size, 3), np.float32)
    brown = np.array([150, 98, 70], np.float32)
    if cls == 0:  # nevus: uniform brown, sometimes a darker centre
        body[:] = brown * rng.uniform(0.6, 1.25) + rng.normal(0, 4, (size, size, 3))
        if rng.random() < 0.4:
            body *= 0.75 + 0.25 * _smooth_field(rng, size, 2)[..., None]
    elif cls == 1:  # melanoma: darker, two to four colour regions
        palette = np.array(
            [[60, 40, 34], [110, 72, 52], [105, 112, 140], [150, 75, 65]], np.float32
        )
        chosen = np.concatenate([[0], rng.permutation(3)[: rng.integers(1, 4)] + 1])
        palette = palette[chosen] * rng.uniform(0.75, 1.3)
        fields = np.stack([_smooth_field(rng, size, int(rng.integers(3, 8))) for _ in palette])
        body[:] = palette[fields.argmax(0)] + rng.normal(0, 8, (size, size, 3))
    else:  # seborrheic keratosis: waxy tan with bright speckles and dark pores
        base = np.array([185, 145, 105], np.float32) * rng.uniform(0.7, 1.12)
        texture = _smooth_field(rng, size, size // 6)
        body[:] = base * (1 - rng.uniform(0.1, 0.35) * (texture[..., None] - 0.5) * 2)
        speck = rng.random((size, size))
        body[speck > 1 - rng.uniform(0.005, 0.04)] = [235, 225, 200]
        body[speck < rng.uniform(0.005, 0.04)] = [80, 55, 40]
    alpha = Image.fromarray(mask.astype(np.uint8) * 255)
    blur = rng.uniform(*{0: (0.5, 1.5), 1: (1.0, 3.0), 2: (0.2, 0.8)}[cls]) * size / 128
    alpha = np.asarray(alpha.filter(ImageFilter.GaussianBlur(blur)), np.float32)[..., None] / 255
    img = img * (1 - alpha) + body * alpha
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    _draw_hairs(draw, rng, int(rng.integers(0, 6)), size, size / 8)
    for _ in range(rng.integers(0, 3)):  # air bubbles: bright rings
        c, rad = rng.uniform(0, size, 2), rng.uniform(0.02, 0.06) * size
        draw.ellipse([*(c - rad), *(c + rad)], outline=(245, 245, 245), width=1)
    return np.asarray(out), mask


def _write_split(root: Path, split: str, n: int, size: int, rng: np.random.Generator, start: int):
    prefix = ISIC2017_PREFIX[split]
    data_dir, mask_dir = root / f"{prefix}_Data", root / f"{prefix}_Part1_GroundTruth"
    data_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    counts = np.floor(np.asarray(CLASS_FRACTIONS) * n).astype(int)
    counts[0] += n - counts.sum()
    classes = rng.permutation(np.repeat(np.arange(3), counts))
    lines = ["image_id,melanoma,seborrheic_keratosis"]
    for k, cls in enumerate(classes):
        image_id = f"ISIC_{start + k:07d}"
        img, mask = render_lesion(rng, int(cls), size)
        Image.fromarray(img).save(data_dir / f"{image_id}.jpg", quality=90)
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / f"{image_id}_segmentation.png")
        if k < 2:  # decoys, as in the official folders: not listed in the CSV
            decoy = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(decoy).save(data_dir / f"{image_id}_superpixels.png")
        lines.append(f"{image_id},{float(cls == 1):.1f},{float(cls == 2):.1f}")
    (root / f"{prefix}_Part3_GroundTruth.csv").write_text("\n".join(lines) + "\n")


def make_synthetic_isic2017(
    root: str | os.PathLike,
    n_train: int = 300,
    n_val: int = 60,
    n_test: int = 150,
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Write a synthetic ISIC 2017 dataset into the new folder ``root`` and return it.

    Args:
        root: output folder; must not exist or be empty.
        n_train, n_val, n_test: images per split (classes in :data:`CLASS_FRACTIONS`).
        size: image side in pixels (square images).
        seed: the same seed writes byte-identical files.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"make_synthetic_isic2017: {root} exists and is not empty")
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if n < 3:
            raise ValueError(f"{name} must be >= 3 (one image per class), got {n}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    start = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        _write_split(root, split, n, size, rng, start)
        start += n
    return root


def default_synthetic_root(
    n_train: int = 300,
    n_val: int = 60,
    n_test: int = 150,
    size: int = 128,
    seed: int = 0,
    cache: str | os.PathLike | None = None,
) -> Path:
    """The synthetic dataset for these settings, generated once into the cache and reused.

    The cache folder is ``cache`` or ``$ATTNBLOCKS_CACHE_DIR`` (else ``$ATTNBLOCKS_CACHE``, else
    ``~/.cache/attnblocks``, see :func:`~examples.isic.data.cache.default_cache_dir`); the data go to
    ``<cache>/synthetic/isic2017-<settings hash>``, built in a temporary folder beside it and
    renamed into place (atomic: concurrent callers never see a half-written dataset).
    """
    key = f"{n_train}-{n_val}-{n_test}-{size}-{seed}-v2"
    return cached_dataset(
        "isic2017",
        key,
        lambda tmp: make_synthetic_isic2017(tmp, n_train, n_val, n_test, size, seed),
        cache,
    )


def cached_dataset(
    name: str,
    key: str,
    build: Callable[[Path], object],
    cache: str | os.PathLike | None = None,
) -> Path:
    """``<cache>/synthetic/<name>-<hash of key>``, built once by ``build(folder)`` and reused.

    The cache folder is ``cache`` or ``$ATTNBLOCKS_CACHE_DIR`` (else ``$ATTNBLOCKS_CACHE``, else
    ``~/.cache/attnblocks``, see :func:`~examples.isic.data.cache.default_cache_dir`). The data are
    built in a temporary folder beside the final one and renamed into place, so concurrent callers
    never see a half-written dataset.
    """
    base = Path(cache) if cache else default_cache_dir()
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    final = base.expanduser() / "synthetic" / f"{name}-{digest}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes a private (0700) folder
        build(tmp)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():  # a concurrent caller may have won the rename
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
