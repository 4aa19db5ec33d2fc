"""The resized-image cache.

Real ISIC JPEGs reach ~6000x4000 pixels; decoding one costs ~0.3 s. The cache decodes each image
once (JPEG draft mode, see :mod:`.images`), resizes it to the target size and stores it as a JPEG
(masks: PNG, nearest-neighbour, 0/255) under ``cache_dir``.

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
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...run.files import atomic_write
from .images import ImageReadError, load_image, load_mask, target_size

__all__ = ["ResizedImageCache", "check_outside", "default_cache_dir"]

CACHE_VERSION = 2


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

    def _mask_entry(self, src: str | os.PathLike, image_wh: tuple[int, int]) -> Path:
        # "rule2": masks binarised by mask_to_binary (0/1 masks were read as empty before)
        return self._entry(Path(src), "mask", f"{image_wh[0]}x{image_wh[1]}|rule2")

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

    def get_mask(self, src: str | os.PathLike, image_wh: tuple[int, int]) -> Image.Image:
        """The binary mask of ``src`` resized (nearest) to ``image_wh = (width, height)``,
        the size of its image."""
        entry = self._mask_entry(src, image_wh)
        if entry.exists():
            try:
                return load_mask(entry)
            except ImageReadError:
                entry.unlink(missing_ok=True)
        mask = load_mask(src, image_wh)
        _atomic_save(mask.convert("1"), entry, format="PNG")
        return mask

    def get_image_tensor(self, src: str | os.PathLike) -> torch.Tensor:
        """:meth:`get_image` as a uint8 ``(3, H, W)`` tensor."""
        return torch.from_numpy(np.array(self.get_image(src))).permute(2, 0, 1)

    def get_mask_tensor(self, src: str | os.PathLike, image_wh: tuple[int, int]) -> torch.Tensor:
        """:meth:`get_mask` as a uint8 ``(1, H, W)`` tensor of 0/1; ``image_wh = (w, h)``."""
        entry = self._mask_entry(src, image_wh)
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
        return (torch.from_numpy(np.asarray(self.get_mask(src, image_wh))) > 127).to(torch.uint8)[
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
