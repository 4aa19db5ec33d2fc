"""Decoding ISIC images and lesion masks: JPEG draft mode, masks in any common encoding.

- :func:`load_image`: an RGB image, resized on decode (``size``: ``int`` = length of the *shorter*
  side, aspect ratio kept, never upscaled, like ``torchvision.transforms.Resize(int)``;
  ``(height, width)`` = exact size; see :func:`target_size`). JPEG *draft mode* (libjpeg's DCT
  scaling) decodes straight to 1/2, 1/4 or 1/8 of the size, so a 6000x4000 image costs about as
  much as a 750x500 one.
- :func:`load_mask`: a binary lesion mask (0/255 ``L`` image) resized with nearest neighbour to
  the ``(width, height)`` of its image; :func:`mask_to_binary` is the binarisation rule.
- :func:`verify_files`: decode every file of a dataset once (``skip_bad``), in worker processes.

A file that cannot be decoded (unreadable, truncated, not an image) raises
:class:`ImageReadError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

__all__ = [
    "ImageReadError",
    "load_image",
    "load_mask",
    "mask_to_binary",
    "target_size",
    "verify_files",
]

SizeArg = int | tuple[int, int] | None


class ImageReadError(ValueError):
    """An image or mask file that cannot be decoded (unreadable, truncated, not an image)."""


def target_size(width: int, height: int, size: SizeArg) -> tuple[int, int]:
    """Output ``(width, height)`` for a source of ``width x height`` and a ``size`` setting.

    ``None`` keeps the size; an ``int`` sets the shorter side (never upscales); a ``(h, w)`` tuple
    is the exact size.
    """
    if size is None:
        return width, height
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
        short = min(width, height)
        if short <= size:
            return width, height
        scale = size / short
        return max(1, round(width * scale)), max(1, round(height * scale))
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return int(size[1]), int(size[0])


def load_image(path: str | os.PathLike, size: SizeArg = None) -> Image.Image:
    """Decode an RGB image, resized to ``size`` (see :func:`target_size`) using JPEG draft mode.

    Raises :class:`ImageReadError` naming the file when it cannot be decoded or is truncated.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            out_wh = target_size(im.width, im.height, size)
            if out_wh != im.size and im.format == "JPEG":
                im.draft("RGB", out_wh)  # DCT-domain downscale to >= out_wh
            im.load()
            if im.mode.startswith("I"):  # 16-bit grey PNG: PIL would clip it to 0/255
                arr = np.asarray(im)
                arr = arr / 257 if arr.max() > 255 else arr
                im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
            im = im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # PIL raises all three on bad files
        raise ImageReadError(f"cannot read image {path}: {err}") from err
    if im.size != out_wh:
        im = im.resize(out_wh, Image.Resampling.BILINEAR)
    return im


def mask_to_binary(im: Image.Image) -> np.ndarray:
    """The lesion pixels of a decoded mask, a bool ``(H, W)`` array (the rule of :func:`load_mask`).

    Colour (``RGB``, ``RGBA``, palette ``P``) masks are read by their largest channel, grey
    (``L``, ``LA``) by their grey value, bilevel (``1``) masks as they are. Then: a mask whose
    largest value is 1 is a 0/1 mask (lesion = 1, i.e. threshold 0.5); otherwise lesion = above half of the
    8-bit range (``> 127``; 0/255 masks, anti-aliased edges), or of the 16-bit range (``> 32767``)
    for 16-bit PNGs holding values above 255. An all-zero mask is an empty mask.
    """
    if im.mode == "1":
        return np.array(im, dtype=bool)
    if im.mode in ("P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        arr = np.asarray(im.convert("RGB")).max(axis=-1)
    elif im.mode in ("LA", "La"):
        arr = np.asarray(im)[..., 0]
    else:  # L, I, I;16, F
        arr = np.asarray(im)
    top = float(arr.max()) if arr.size else 0.0
    if top <= 1:
        return arr >= 0.5
    if top > 255 and im.mode.startswith("I"):
        return arr > 32767
    return arr > 127


def load_mask(path: str | os.PathLike, image_wh: tuple[int, int] | None = None) -> Image.Image:
    """Decode a lesion mask as a binary ``L`` image (0/255), resized with nearest to ``size``.

    Every common encoding is read: 0/255 and 0/1 8-bit PNGs, bilevel (1-bit), palette, colour and
    16-bit PNGs; see :func:`mask_to_binary` for the rule. ``image_wh`` is ``(width, height)`` --
    the size of the image the mask belongs to; a mask whose size differs from its image is resized to
    it (after binarising), never rejected.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            binary = mask_to_binary(im)
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read mask {path}: {err}") from err
    out = Image.fromarray(binary.astype(np.uint8) * 255, mode="L")
    if image_wh is not None and out.size != tuple(image_wh):
        out = out.resize(tuple(image_wh), Image.Resampling.NEAREST)
    return out


def _verify_one(item: tuple[str, str | None]) -> tuple[str, str] | None:
    image_path, mask_path = item
    try:
        load_image(image_path, 32)  # JPEG draft mode: every byte is read, little is decoded
        if mask_path is not None:
            load_mask(mask_path)
    except ImageReadError as err:
        return (image_path, str(err))
    return None


def verify_files(
    items: Iterable[tuple[str | os.PathLike, str | os.PathLike | None]],
    workers: int = 0,
    progress: bool = True,
) -> list[tuple[str, str]]:
    """Decode every ``(image_path, mask_path_or_None)`` pair.

    Returns ``[(image path, error), ...]`` for those that fail (unreadable, truncated, not an
    image, or an unreadable mask).

    Images are decoded in JPEG draft mode at a small size (the whole file is still read, so a
    truncated file fails), in ``workers`` processes (0 = in this process).
    """
    from tqdm.auto import tqdm

    items = [(str(i), None if m is None else str(m)) for i, m in items]
    bar = tqdm(total=len(items), desc="checking images", disable=not progress)
    failures: list[tuple[str, str]] = []
    if workers <= 0 or len(items) < 2:
        results = map(_verify_one, items)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        chunk = max(1, min(64, len(items) // (workers * 8) or 1))
        results = pool.map(_verify_one, items, chunksize=chunk)
    try:
        for res in results:
            if res is not None:
                failures.append(res)
            bar.update()
    finally:
        if pool is not None:
            pool.shutdown()
        bar.close()
    return failures


# Truncated files must raise, not decode as grey: keep PIL's strict default explicit.
ImageFile.LOAD_TRUNCATED_IMAGES = False
