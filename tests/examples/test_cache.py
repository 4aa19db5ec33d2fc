"""Resized-image cache: draft-mode decode, sizes, reuse, invalidation, atomic writes, workers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from examples.isic import ImageReadError, ISIC2017Dataset, ResizedImageCache, load_image, load_mask
from examples.isic.data.images import target_size
from examples.run.files import atomic_write


def _jpeg(path: Path, w: int, h: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = np.asarray(
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((w, h))
    )
    Image.fromarray(base).save(path, quality=92)
    return path


def test_target_size():
    assert target_size(600, 400, None) == (600, 400)
    assert target_size(600, 400, 200) == (300, 200)
    assert target_size(400, 600, 200) == (200, 300)
    assert target_size(100, 80, 200) == (100, 80)  # never upscaled
    assert target_size(600, 400, (50, 70)) == (70, 50)
    with pytest.raises(ValueError, match="positive"):
        target_size(10, 10, 0)


def test_load_image_draft_mode_matches_full_decode(tmp_path):
    src = _jpeg(tmp_path / "big.jpg", 1600, 1200)
    small = load_image(src, 150)
    assert small.size == (200, 150)
    with Image.open(src) as im:
        ref = im.convert("RGB").resize((200, 150), Image.Resampling.BILINEAR)
    diff = np.abs(np.asarray(small, np.float32) - np.asarray(ref, np.float32))
    assert diff.mean() < 3.0  # the same picture, decoded at 1/8 scale first
    with pytest.raises(ImageReadError, match="nothing.jpg"):
        load_image(tmp_path / "nothing.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageReadError, match="text.jpg"):
        load_image(tmp_path / "text.jpg")


def test_load_mask_binarises_and_resizes(tmp_path):
    m = np.zeros((40, 60), np.uint8)
    m[10:30, 20:40] = 200
    Image.fromarray(m).save(tmp_path / "m.png")
    out = np.asarray(load_mask(tmp_path / "m.png", (30, 20)))
    assert out.shape == (20, 30) and set(np.unique(out)) == {0, 255}
    assert out[10, 15] == 255 and out[0, 0] == 0


def test_cache_reuse_invalidation_and_settings(tmp_path):
    src = _jpeg(tmp_path / "a.jpg", 800, 600)
    cache = ResizedImageCache(tmp_path / "cache", size=120)
    im = cache.get_image(src)
    assert im.size == (160, 120)
    entry = cache.image_entry(src)
    assert entry.is_file() and entry.parent.parent == (tmp_path / "cache").resolve()
    stamp = entry.stat().st_mtime_ns
    assert cache.get_image(src).size == (160, 120)
    assert entry.stat().st_mtime_ns == stamp  # reused, not rewritten
    # source changed -> a new entry
    _jpeg(src, 800, 600, seed=1)
    os.utime(src, ns=(stamp + 10**9, stamp + 10**9))
    assert cache.image_entry(src) != entry
    new = np.asarray(cache.get_image(src), np.float32)
    assert np.abs(new - np.asarray(im, np.float32)).mean() > 5
    # other settings -> another folder
    other = ResizedImageCache(tmp_path / "cache", size=(50, 50))
    assert other.folder != cache.folder and other.get_image(src).size == (50, 50)
    assert ResizedImageCache(tmp_path / "cache", size=120, quality=80).folder != cache.folder
    # a damaged entry is rebuilt
    cache.image_entry(src).write_bytes(b"garbage")
    assert cache.get_image(src).size == (160, 120)
    leftovers = [p for p in (tmp_path / "cache").rglob(".*")]  # no temporary file left
    assert not leftovers


def test_cache_build_with_workers_and_masks(tmp_path):
    items = []
    for k in range(6):
        img = _jpeg(tmp_path / f"i{k}.jpg", 300, 200, seed=k)
        mask = np.zeros((100, 150), np.uint8)  # half-size mask: resized to the image
        mask[20:80, 30:120] = 255
        Image.fromarray(mask).save(tmp_path / f"i{k}_segmentation.png")
        items.append((img, tmp_path / f"i{k}_segmentation.png" if k % 2 == 0 else None))
    (tmp_path / "bad.jpg").write_bytes(_jpeg(tmp_path / "tmp.jpg", 300, 200).read_bytes()[:200])
    cache = ResizedImageCache(tmp_path / "c", size=100)
    with pytest.raises(ImageReadError, match="bad.jpg"):
        cache.build([*items, (tmp_path / "bad.jpg", None)], workers=0, progress=False)
    failures = cache.build(
        [*items, (tmp_path / "bad.jpg", None)], workers=2, progress=False, skip_errors=True
    )
    assert [Path(f).name for f, _ in failures] == ["bad.jpg"]
    files = sorted(p.suffix for p in cache.folder.iterdir())
    assert files.count(".jpg") == 6 and files.count(".png") == 3
    mask = cache.get_mask(items[0][1], (150, 100))
    assert mask.size == (150, 100) and np.asarray(mask)[50, 75] == 255


def test_dataset_with_cache_matches_direct_resize(tmp_path):
    from examples.isic import make_synthetic_isic2017

    root = make_synthetic_isic2017(tmp_path / "d", n_train=6, n_val=3, n_test=3, size=96, seed=2)
    direct = ISIC2017Dataset(root, "train", load_size=48)
    cached = ISIC2017Dataset(
        root, "train", load_size=48, cache_dir=tmp_path / "c", cache_workers=0, progress=False
    )
    assert len(list(cached.cache.folder.iterdir())) == 12  # 6 images + 6 masks, built up front
    a, b = direct[1], cached[1]
    assert a["image"].shape == b["image"].shape == (3, 48, 48)
    assert (a["image"] - b["image"]).abs().mean() < 0.02  # JPEG re-encoding only
    assert (a["mask"] != b["mask"]).float().mean() < 0.02


def test_warm_build_reads_headers_only(tmp_path, monkeypatch):
    import examples.isic.data.cache as cache_mod

    img = _jpeg(tmp_path / "a.jpg", 300, 200)
    mask = np.zeros((200, 300), np.uint8)
    mask[50:150, 100:200] = 255
    Image.fromarray(mask).save(tmp_path / "a_segmentation.png")
    items = [(img, tmp_path / "a_segmentation.png")]
    cache = ResizedImageCache(tmp_path / "c", size=100)
    assert cache.build(items, progress=False) == []
    built = {p: p.stat().st_mtime_ns for p in cache.folder.iterdir()}
    assert len(built) == 2

    def no_decode(*args, **kwargs):
        raise AssertionError("a warm build decoded a file")

    with monkeypatch.context() as m:
        m.setattr(cache_mod, "load_image", no_decode)
        m.setattr(cache_mod, "load_mask", no_decode)
        assert cache.build(items, progress=False) == []
    assert {p: p.stat().st_mtime_ns for p in cache.folder.iterdir()} == built
    # an unreadable entry is rebuilt by the build; a truncated one when it is next read
    entry = cache.image_entry(img)
    good = entry.read_bytes()
    entry.write_bytes(b"garbage")
    assert cache.build(items, progress=False) == []
    assert entry.read_bytes() != b"garbage"
    assert cache.get_image(img).size == (150, 100)
    entry.write_bytes(good[:300])
    assert cache.build(items, progress=False) == []
    assert cache.get_image(img).size == (150, 100)
    assert entry.read_bytes() != good[:300]


def test_atomic_write_replaces_whole_or_leaves_the_old_file(tmp_path):
    dest = tmp_path / "sub" / "split.json"
    atomic_write(dest, lambda fh: fh.write(b"one"))
    assert dest.read_bytes() == b"one"

    def fail(fh):
        fh.write(b"partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write(dest, fail)
    assert dest.read_bytes() == b"one"
    assert [p.name for p in dest.parent.iterdir()] == ["split.json"]  # no temporary left
