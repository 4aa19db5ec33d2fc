"""Data-pipeline throughput: training patches per second per core, and cache build speed.

Method. Large dermoscopy-like JPEGs (default 3000x2000, with full-size PNG masks, written in the
ISIC 2017 layout into a temporary folder) stand in for real ISIC images.

- ``cache_build``: :class:`~examples.isic.ISIC2017Dataset` with ``cache_dir`` decodes every image
  once (JPEG draft mode), resizes it (shorter side ``--cache-size``) and its mask, and writes both
  atomically; images/s for 1 process and for ``--workers`` processes, wall-clock, cold cache.
- ``*_patch``: ``dataset[i]`` from the warm cache through a training transform = decode the cached
  JPEG (+ the mask for ``*_with_mask``) + crop + resize + augment + to float + normalize, in one
  process with ``torch.set_num_threads(1)`` (= one DataLoader worker on one core).
  ``patches_per_s`` is per core: items per second of process CPU time, median over blocks (on a
  shared machine, wall time also counts other jobs' turns); ``patches_per_s_wall`` is the
  wall-clock figure from ``Timer.blocked_autorange``. A DataLoader with N workers on N free cores
  delivers about N times ``patches_per_s``.

Run ``python benchmarks/data_pipeline.py`` (full, writes ``benchmarks/results/data_pipeline-cpu.json``)
or ``--quick`` (seconds; small images). Target: >= 200 ARL patches/s per core at 224.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import (  # noqa: E402
    add_common_args,
    default_output,
    format_table,
    make_payload,
    run_metadata,
    setup_run,
    time_fn,
    write_results,
)
from examples.isic import (  # noqa: E402
    ISIC2017Dataset,
    arl_train_transform,
    attnmel_train_transform,
)
from examples.isic.data.synthetic import render_lesion  # noqa: E402

TARGET_PATCHES_PER_S = 200.0


def write_large_isic2017(root: Path, n: int, width: int, height: int, seed: int = 0) -> Path:
    """``n`` large JPEGs (+ full-size masks, CSV) in the ISIC 2017 training layout under ``root``."""
    rng = np.random.default_rng(seed)
    data = root / "ISIC-2017_Training_Data"
    masks = root / "ISIC-2017_Training_Part1_GroundTruth"
    data.mkdir(parents=True)
    masks.mkdir(parents=True)
    lines = ["image_id,melanoma,seborrheic_keratosis"]
    for k in range(n):
        cls = k % 3
        img, mask = render_lesion(rng, cls, 256)
        big = Image.fromarray(img).resize((width, height), Image.Resampling.BICUBIC)
        arr = np.asarray(big, np.int16) + rng.integers(-6, 7, (height, width, 3), dtype=np.int16)
        image_id = f"ISIC_{k:07d}"
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(
            data / f"{image_id}.jpg", quality=90
        )
        Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height)).save(
            masks / f"{image_id}_segmentation.png"
        )
        lines.append(f"{image_id},{float(cls == 1)},{float(cls == 2)}")
    (root / "ISIC-2017_Training_Part3_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    return root


def bench_cache_build(root: Path, cache_root: Path, cache_size: int, workers: int) -> dict:
    """Cold-cache build of the whole split; images (with their masks) per second."""
    start = time.perf_counter()
    ds = ISIC2017Dataset(
        root, "train", load_size=cache_size, cache_dir=cache_root, cache_workers=workers,
        progress=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    return {
        "name": "cache_build",
        "params": {"images": len(ds), "cache_size": cache_size, "workers": workers},
        "metrics": {
            "images_per_s": len(ds) / elapsed,
            "images_per_s_per_process": len(ds) / elapsed / max(1, workers),
            "wall_s": elapsed,
        },
    }


def bench_patches(
    ds: ISIC2017Dataset, name: str, size: int, min_run_time: float, blocks: int = 5
) -> dict:
    """Per-item cost of ``ds[i]`` (decode + crop + augment + to tensor), cycling over the set.

    ``patches_per_s`` is per core: items per second of *process CPU time* (one thread), the
    median over ``blocks`` blocks -- on a shared machine wall time also counts other jobs' turns;
    ``patches_per_s_wall`` is the wall-clock figure (harness ``time_fn``, blocked_autorange).
    """
    counter = iter(range(10**12))

    def one() -> None:
        item = ds[next(counter) % len(ds)]
        if item["image"].shape[-1] != size:
            raise RuntimeError(f"unexpected patch shape {tuple(item['image'].shape)}")

    wall = time_fn(one, min_run_time=min_run_time, warmup=2)
    per_block = max(5, int(min_run_time / blocks / max(wall.median, 1e-6)))
    cpu = []
    for _ in range(blocks):
        start = time.process_time()
        for _ in range(per_block):
            one()
        cpu.append((time.process_time() - start) / per_block)
    cpu_median = float(np.median(cpu))
    return {
        "name": name,
        "params": {
            "size": size,
            "threads": torch.get_num_threads(),
            "images": len(ds),
            "masks": ds.load_masks,
        },
        "metrics": {
            "patches_per_s": 1.0 / cpu_median,
            "cpu_s_per_patch": cpu_median,
            "cpu_s_per_patch_iqr": float(np.subtract(*np.percentile(cpu, [75, 25]))),
            "patches_per_s_wall": 1.0 / wall.median,
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, default_device="cpu")
    parser.add_argument("--images", type=int, default=None, help="large JPEGs to generate")
    parser.add_argument("--source-size", type=int, nargs=2, default=None, metavar=("W", "H"))
    parser.add_argument("--cache-size", type=int, default=None, help="cached shorter side")
    parser.add_argument("--size", type=int, default=None, help="training patch side")
    parser.add_argument("--workers", type=int, default=None, help="cache-build processes")
    args = parser.parse_args(argv)
    if args.threads is None:
        args.threads = 1  # one core per DataLoader worker
    device = setup_run(args)
    quick = args.quick
    n = args.images or (4 if quick else 24)
    width, height = args.source_size or ((900, 600) if quick else (3000, 2000))
    cache_size = args.cache_size or (192 if quick else 448)
    size = args.size or (96 if quick else 224)
    workers = args.workers if args.workers is not None else (2 if quick else os.cpu_count() or 1)
    min_run_time = args.min_run_time or (0.2 if quick else 3.0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="attnblocks-bench-") as tmp:
        root = write_large_isic2017(Path(tmp) / "isic2017", n, width, height, args.seed)
        rows.append(bench_cache_build(root, Path(tmp) / "cache1", cache_size, workers=0))
        if workers > 0:
            rows.append(bench_cache_build(root, Path(tmp) / "cacheN", cache_size, workers))
        cached = dict(load_size=cache_size, cache_dir=Path(tmp) / "cache1", progress=False)
        variants = [
            ("arl_train_patch", arl_train_transform(size), False),  # ARL uses no masks
            ("arl_train_patch_with_mask", arl_train_transform(size), True),
            ("attnmel_train_patch_with_mask", attnmel_train_transform(size), True),
        ]
        for name, tf, masks in variants:
            ds = ISIC2017Dataset(root, "train", transform=tf, load_masks=masks, **cached)
            rows.append(bench_patches(ds, name, size, min_run_time))
    config = {
        "images": n,
        "source_size": [width, height],
        "cache_size": cache_size,
        "patch_size": size,
        "workers": workers,
        "threads": args.threads,
        "min_run_time": min_run_time,
        "quick": quick,
        "target_patches_per_s_per_core": TARGET_PATCHES_PER_S,
    }
    payload = make_payload("data_pipeline", rows, config=config, metadata=run_metadata(device))
    table = [{"name": r["name"], **r["params"], **r["metrics"]} for r in rows]
    cols = ["name", "workers", "size", "images_per_s", "patches_per_s", "patches_per_s_wall"]
    print(format_table(table, cols))
    out = default_output("data_pipeline", args, device)
    if out is not None:
        print(f"wrote {write_results(payload, out)}")
    return payload


if __name__ == "__main__":
    main()
