"""Image decoding and the resized-image cache.

Real ISIC JPEGs reach ~6000x4000 pixels; decoding one costs ~0.3 s. The cache decodes each image
once, with JPEG *draft mode* (libjpeg's DCT scaling decodes straight to 1/2, 1/4 or 1/8 of the
size, so a 6000x4000 image costs about as much as a 750x500 one), resizes it to the target size
and stores it as a JPEG (masks: PNG, nearest-neighbour, 0/255) under ``cache_dir``.

- ``size``: ``int`` = length of the *shorter* side after resizing (aspect ratio kept, like
  ``torchvision.transforms.Resize(int)``; never upscaled); ``(height, width)`` = exact size.
- Entries are keyed on the source's absolute path, byte size and mtime and on the settings (size,
  quality, resampling, format version), so they are invalidated when either changes.
- Writes are atomic (temporary file in the same folder + ``os.replace``); several workers or
  processes can fill one cache at once.
- ``ResizedImageCache.build(items, workers=N)`` fills it in parallel with a tqdm progress bar;
  ``get_image`` / ``get_mask`` (PIL) and ``get_image_tensor`` / ``get_mask_tensor`` (uint8
  tensors) fill it lazily.
- Masks are stored as bilevel (1-bit) PNGs, which decode ~3x faster than 8-bit ones.

    >>> cache = ResizedImageCache("/tmp/isic-cache", size=256)            # doctest: +SKIP
    >>> img = cache.get_image("ISIC-2017_Training_Data/ISIC_0000000.jpg")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageFile

__all__ = [
    "ImageReadError",
    "ResizedImageCache",
    "atomic_write",
    "default_cache_dir",
    "load_image",
    "load_mask",
    "mask_to_binary",
    "target_size",
    "verify_files",
]

CACHE_VERSION = 2
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


def load_mask(path: str | os.PathLike, size: tuple[int, int] | None = None) -> Image.Image:
    """Decode a lesion mask as a binary ``L`` image (0/255), resized with nearest to ``size``.

    Every common encoding is read: 0/255 and 0/1 8-bit PNGs, bilevel (1-bit), palette, colour and
    16-bit PNGs; see :func:`mask_to_binary` for the rule. ``size`` is ``(width, height)`` -- the
    size of the image the mask belongs to; a mask whose size differs from its image is resized to
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
    if size is not None and out.size != tuple(size):
        out = out.resize(tuple(size), Image.Resampling.NEAREST)
    return out


def atomic_write(dest: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """``write(fh)`` into a temporary binary file beside ``dest``, then ``os.replace`` it onto
    ``dest`` (readers never see a partial file; the temporary file is removed on error)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=dest.suffix)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """This process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_save(im: Image.Image, dest: Path, **kwargs) -> None:
    atomic_write(dest, lambda fh: im.save(fh, **kwargs))


class ResizedImageCache:
    """Resized copies of images and masks, stored under ``cache_dir``.

    Args:
        cache_dir: folder for the cache (created). Must not lie inside a data folder you want
            untouched: datasets check that it is outside their ``root``.
        size: shorter side (``int``) or exact ``(height, width)`` of the cached images.
        quality: JPEG quality of cached images (default 95).
    """

    def __init__(
        self, cache_dir: str | os.PathLike, size: int | tuple[int, int], quality: int = 95
    ):
        if size is None:
            raise ValueError("ResizedImageCache needs a size (int shorter side or (h, w))")
        target_size(64, 64, size)  # validates
        self.root = Path(cache_dir).expanduser().resolve()
        self.size = size
        self.quality = int(quality)
        settings = {
            "v": CACHE_VERSION,
            "size": size,
            "quality": self.quality,
            "resample": "bilinear",
        }
        self.settings_tag = hashlib.sha1(json.dumps(settings).encode()).hexdigest()[:10]
        self.folder = self.root / f"{_size_name(size)}-{self.settings_tag}"

    def __repr__(self) -> str:
        return f"ResizedImageCache({str(self.root)!r}, size={self.size!r}, quality={self.quality})"

    def _entry(self, src: Path, kind: str, extra: str = "") -> Path:
        src = Path(src).resolve()
        try:
            st = src.stat()
        except OSError as err:
            raise ImageReadError(f"cannot read {kind} {src}: {err}") from err
        key = f"{src}|{st.st_size}|{st.st_mtime_ns}|{kind}|{extra}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        suffix = ".jpg" if kind == "image" else ".png"
        return self.folder / f"{src.stem}-{digest}{suffix}"

    def image_entry(self, src: str | os.PathLike) -> Path:
        """Path of the cached copy of ``src`` (may not exist yet)."""
        return self._entry(Path(src), "image")

    def _mask_entry(self, src: str | os.PathLike, image_size: tuple[int, int]) -> Path:
        # "rule2": masks binarised by mask_to_binary (0/1 masks were read as empty before)
        return self._entry(Path(src), "mask", f"{image_size[0]}x{image_size[1]}|rule2")

    def get_image(self, src: str | os.PathLike) -> Image.Image:
        """The resized RGB image of ``src``; decoded and stored on first use."""
        entry = self.image_entry(src)
        if entry.exists():
            try:
                return load_image(entry)
            except ImageReadError:
                entry.unlink(missing_ok=True)  # a damaged cache entry is rebuilt
        im = load_image(src, self.size)
        _atomic_save(im, entry, format="JPEG", quality=self.quality)
        return im

    def get_mask(self, src: str | os.PathLike, image_size: tuple[int, int]) -> Image.Image:
        """The binary mask of ``src`` resized (nearest) to ``image_size = (width, height)``."""
        entry = self._mask_entry(src, image_size)
        if entry.exists():
            try:
                return load_mask(entry)
            except ImageReadError:
                entry.unlink(missing_ok=True)
        mask = load_mask(src, image_size)
        _atomic_save(mask.convert("1"), entry, format="PNG")
        return mask

    def get_image_tensor(self, src: str | os.PathLike) -> torch.Tensor:
        """:meth:`get_image` as a uint8 ``(3, H, W)`` tensor."""
        return torch.from_numpy(np.array(self.get_image(src))).permute(2, 0, 1)

    def get_mask_tensor(self, src: str | os.PathLike, image_size: tuple[int, int]) -> torch.Tensor:
        """:meth:`get_mask` as a uint8 ``(1, H, W)`` tensor of 0/1; ``image_size = (w, h)``."""
        entry = self._mask_entry(src, image_size)
        if entry.exists():
            try:
                with Image.open(entry) as im:
                    im.load()
                    arr = np.array(im)  # bool for the 1-bit PNGs of the cache
                return torch.from_numpy(arr > (0 if arr.dtype == bool else 127)).to(torch.uint8)[
                    None
                ]
            except (OSError, SyntaxError, ValueError):
                entry.unlink(missing_ok=True)
        return (torch.from_numpy(np.asarray(self.get_mask(src, image_size))) > 127).to(torch.uint8)[
            None
        ]

    def build(
        self,
        items: Iterable[tuple[str | os.PathLike, str | os.PathLike | None]],
        workers: int = 0,
        progress: bool = True,
        skip_errors: bool = False,
    ) -> list[tuple[str, str]]:
        """Fill the cache for ``(image_path, mask_path_or_None)`` pairs.

        Entries already present are not decoded (only the image's header is read); a damaged one
        is rebuilt when it is next read.

        Args:
            workers: processes to use (0 = in this process).
            progress: show a tqdm progress bar.
            skip_errors: collect unreadable files instead of raising.

        Returns:
            ``[(path, error message), ...]`` for files that failed (only with ``skip_errors``).
        """
        from tqdm.auto import tqdm

        items = [(str(i), None if m is None else str(m)) for i, m in items]
        failures: list[tuple[str, str]] = []
        bar = tqdm(total=len(items), desc=f"caching images at {self.size}", disable=not progress)
        if workers <= 0:
            results = (_build_one(self, item) for item in items)
            for res in results:
                _collect(res, failures, skip_errors)
                bar.update()
        else:
            chunk = max(1, min(64, len(items) // (workers * 8) or 1))
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for res in pool.map(_build_one, [self] * len(items), items, chunksize=chunk):
                    _collect(res, failures, skip_errors)
                    bar.update()
        bar.close()
        return failures


def _size_name(size: int | tuple[int, int]) -> str:
    return f"{size}px" if isinstance(size, int) else f"{size[0]}x{size[1]}"


def _build_one(cache: ResizedImageCache, item: tuple[str, str | None]) -> tuple[str, str] | None:
    image_path, mask_path = item
    try:
        entry = cache.image_entry(image_path)
        try:  # a cached entry's size is in its header: no decode on a warm cache
            with Image.open(entry) as im:
                size = im.size
        except (OSError, SyntaxError, ValueError):  # missing or damaged: (re)build it
            size = cache.get_image(image_path).size
        if mask_path is not None and not cache._mask_entry(mask_path, size).exists():
            cache.get_mask(mask_path, size)
    except ImageReadError as err:
        return (image_path, str(err))
    return None


def _collect(res: tuple[str, str] | None, failures: list, skip_errors: bool) -> None:
    if res is None:
        return
    if not skip_errors:
        raise ImageReadError(res[1])
    failures.append(res)


def default_cache_dir() -> Path:
    """The cache folder of the examples.

    ``$ATTNBLOCKS_CACHE_DIR`` (the variable the library's kernel cache reads), else
    ``$ATTNBLOCKS_CACHE`` (its older name, still read), else ``$XDG_CACHE_HOME/attnblocks`` or
    ``~/.cache/attnblocks``.
    """
    for name in ("ATTNBLOCKS_CACHE_DIR", "ATTNBLOCKS_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attnblocks"


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


def check_outside(cache_dir: str | os.PathLike, roots: Sequence[str | os.PathLike]) -> None:
    """Raise ``ValueError`` when ``cache_dir`` lies inside one of the data ``roots``."""
    cache = Path(cache_dir).expanduser().resolve()
    for root in roots:
        root = Path(root).expanduser().resolve()
        if cache == root or root in cache.parents:
            raise ValueError(
                f"cache_dir {cache} lies inside the data folder {root}; the data folder is never "
                "written to -- choose a cache folder elsewhere"
            )


# Truncated files must raise, not decode as grey: keep PIL's strict default explicit.
ImageFile.LOAD_TRUNCATED_IMAGES = False
