"""Block throughput: ARL bottleneck vs plain bottleneck at ResNet-50's four stage shapes.

For every stage shape (C x H x W = 256x56x56, 512x28x28, 1024x14x14, 2048x7x7; a non-first block:
``C -> C/4 -> C/4 -> C``, identity shortcut), batch size, dtype (fp32, or bf16/fp16 autocast) and
memory format, it times the plain timm ``Bottleneck`` and its ARL conversion alternately in one
process, forward (``eval``, inference mode) and forward+backward (``train``), and reports images/s and
the ARL/plain ratio. For the merge alone (``arl_merge_bn`` with the block's last BatchNorm, and the
plain epilogue ``relu(bn(t) + s)`` for comparison) it reports the achieved memory bandwidth, counting
the minimum traffic (forward: read ``t``, ``s``, write ``y``; backward: read ``dy``, ``y``, ``t``, ``s``,
write ``dt``, ``ds``), as a share of a measured device-to-device copy and, on CUDA, of the nominal
peak bandwidth: a roofline figure for a memory-bound epilogue.

    python -m benchmarks.blocks --device cuda                     # full grid (batch 32/64/128 ...)
    python -m benchmarks.blocks --device cpu --batch-sizes 8 --dtypes fp32
    python -m benchmarks.blocks --quick                           # seconds; CI
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from typing import Any

import torch
from timm.models.resnet import Bottleneck
from torch import nn

from attnblocks import convert_block, merge
from examples.run import autocast, fill_defaults, resolve_device

from . import harness
from .timing import compare_alternating, time_fn

__all__ = ["STAGES", "copy_bandwidth", "main", "nominal_peak_bandwidth", "run"]

STAGES: dict[str, tuple[int, int]] = {  # name -> (channels, spatial size) of ResNet-50's stages
    "layer1": (256, 56),
    "layer2": (512, 28),
    "layer3": (1024, 14),
    "layer4": (2048, 7),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# --dtypes value -> its autocast (examples.run.AMP_DTYPES); fp32 runs without autocast
AMP = {"fp32": "none", "bf16": "bf16", "fp16": "fp16"}


# Nominal DRAM bandwidth (bytes/s) from the vendors' datasheets, by device name, for PyTorch
# versions whose device properties lack the memory clock and bus width.
_DATASHEET = {"H200": 4.8e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12, "H100": 3.35e12,
              "A100-SXM4-80GB": 2.039e12, "A100-PCIE-80GB": 1.935e12, "A100": 1.555e12}  # fmt: skip


def nominal_peak_bandwidth(device: torch.device) -> float | None:
    """Nominal DRAM bandwidth in bytes/s of a CUDA device: from its memory clock and bus width, else
    from the datasheet figure of its name (None where neither is known)."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if clock_khz and bus_bits:
        return 2.0 * clock_khz * 1e3 * bus_bits / 8  # double data rate
    return next((bw for name, bw in _DATASHEET.items() if name in props.name), None)


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 28, min_run_time: float = 0.2) -> float:
    """Measured bandwidth (bytes/s, read + write) of ``dst.copy_(src)`` on a ``nbytes`` buffer."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device=device, min_run_time=min_run_time)
    return 2.0 * nbytes / t.median


def _block_step(
    block: nn.Module, x: torch.Tensor, mode: str, dtype: str, backend: str | None
) -> Callable[[], None]:
    device = x.device
    if mode == "fwd":
        block.eval()

        def fwd() -> None:
            if backend is not None:
                merge.set_merge_backend(backend)
            with torch.inference_mode(), autocast(device, AMP[dtype]):
                block(x)

        return fwd
    block.train()
    grad = torch.randn_like(x)

    def fwd_bwd() -> None:
        if backend is not None:
            merge.set_merge_backend(backend)
        with autocast(device, AMP[dtype]):
            out = block(x)
        out.backward(grad.to(out.dtype))

    return fwd_bwd


def _merge_fns(
    c: int, hw: int, batch: int, dtype: str, cl: bool, device: torch.device, backend: str
) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    """(forward, forward+backward) closures of the ARL merge and of the plain epilogue."""
    fmt = torch.channels_last if cl else torch.contiguous_format
    dt = DTYPES[dtype]
    t = torch.randn(batch, c, hw, hw, device=device, dtype=dt).to(memory_format=fmt)
    s = torch.randn_like(t)
    bn = nn.BatchNorm2d(c, device=device, dtype=dt)
    alpha = torch.tensor(1e-3, device=device, requires_grad=True)
    tg, sg = t.clone().requires_grad_(True), s.clone().requires_grad_(True)
    dy = torch.randn_like(t)

    def arl_fwd() -> None:
        merge.set_merge_backend(backend)
        bn.eval()
        with torch.inference_mode():
            merge.arl_merge_bn(t, bn, s, alpha)

    def arl_fwd_bwd() -> None:
        merge.set_merge_backend(backend)
        bn.train()
        merge.arl_merge_bn(tg, bn, sg, alpha).backward(dy)

    def plain_fwd() -> None:
        bn.eval()
        with torch.inference_mode():
            torch.relu_(bn(t) + s)

    def plain_fwd_bwd() -> None:
        bn.train()
        torch.relu_(bn(tg) + sg).backward(dy)

    return {"arl": (arl_fwd, arl_fwd_bwd), "plain": (plain_fwd, plain_fwd_bwd)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark described by parsed ``args``; return the results document."""
    device = harness.setup_run(args)
    backend = args.merge_backend
    previous = merge.get_merge_backend()
    peak = nominal_peak_bandwidth(device)
    copy_bw = copy_bandwidth(device, nbytes=args.copy_bytes, min_run_time=args.min_run_time)
    print(
        f"copy bandwidth {copy_bw / 1e9:.1f} GB/s"
        + (f", nominal peak {peak / 1e9:.0f} GB/s" if peak else "")
    )
    rows: list[dict[str, Any]] = []
    table: list[dict[str, Any]] = []
    try:
        for stage in args.stages:
            c, hw = STAGES[stage]
            c, hw = max(4, c // args.shrink), max(1, hw // args.shrink)
            for batch in args.batch_sizes:
                for dtype in args.dtypes:
                    for cl in args.channels_last:
                        fmt = torch.channels_last if cl else torch.contiguous_format
                        torch.manual_seed(args.seed)
                        plain = Bottleneck(c, c // 4).to(device, memory_format=fmt)
                        arl = convert_block(plain).to(device, memory_format=fmt)
                        x = torch.randn(batch, c, hw, hw, device=device).to(memory_format=fmt)
                        merges = _merge_fns(c, hw, batch, dtype, cl, device, backend)
                        numel = batch * c * hw * hw
                        item = DTYPES[dtype].itemsize
                        for mode_i, mode in enumerate(args.modes):
                            variants = {
                                "plain": _block_step(copy.deepcopy(plain), x, mode, dtype, None),
                                "arl": _block_step(copy.deepcopy(arl), x, mode, dtype, backend),
                                "merge_plain": merges["plain"][mode_i],
                                "merge_arl": merges["arl"][mode_i],
                            }
                            cmp = compare_alternating(
                                variants,
                                rounds=args.rounds,
                                device=device,
                                min_run_time=args.min_run_time,
                                warmup=args.warmup,
                            )
                            tm = cmp.timings
                            traffic = (3 if mode == "fwd" else 9) * numel * item
                            bw = traffic / tm["merge_arl"].median
                            bw_plain = traffic / tm["merge_plain"].median
                            params = {
                                "stage": stage,
                                "channels": c,
                                "size": hw,
                                "batch_size": batch,
                                "dtype": dtype,
                                "channels_last": cl,
                                "mode": mode,
                                "merge_backend": backend,
                            }
                            metrics = {
                                "plain_median_s": tm["plain"].median,
                                "arl_median_s": tm["arl"].median,
                                "plain_images_per_s": batch / tm["plain"].median,
                                "arl_images_per_s": batch / tm["arl"].median,
                                "ratio_median": cmp.ratios["arl"].median,
                                "ratio_min": cmp.ratios["arl"].min,
                                "ratio_max": cmp.ratios["arl"].max,
                                "merge_arl_median_s": tm["merge_arl"].median,
                                "merge_plain_median_s": tm["merge_plain"].median,
                                "merge_arl_bytes_per_s": bw,
                                "merge_plain_bytes_per_s": bw_plain,
                                "merge_arl_share_of_copy": bw / copy_bw,
                                "merge_arl_share_of_peak": bw / peak if peak else None,
                                "rounds": cmp.ratios["arl"].n,
                            }
                            name = f"{stage}/b{batch}/{dtype}/{'cl' if cl else 'nchw'}/{mode}"
                            rows.append({"name": name, "params": params, "metrics": metrics})
                            table.append(
                                {
                                    "case": name,
                                    "plain_img_s": metrics["plain_images_per_s"],
                                    "arl_img_s": metrics["arl_images_per_s"],
                                    "ratio": metrics["ratio_median"],
                                    "merge_GB_s": bw / 1e9,
                                    "of_copy": bw / copy_bw,
                                    "of_peak": metrics["merge_arl_share_of_peak"],
                                }
                            )
    finally:
        merge.set_merge_backend(previous)
    return harness.finish_run(
        "blocks",
        rows,
        table,
        args,
        device,
        copy_bandwidth_bytes_per_s=copy_bw,
        nominal_peak_bytes_per_s=peak,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    harness.add_common_args(p)
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default 32 64 128")
    p.add_argument("--dtypes", nargs="+", default=None, choices=list(DTYPES))
    p.add_argument(
        "--channels-last",
        nargs="+",
        type=lambda v: {"on": True, "off": False}[v],
        default=None,
        help="on off (default both)",
    )
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd_bwd"], choices=["fwd", "fwd_bwd"])
    p.add_argument(
        "--merge-backend",
        default=None,
        choices=merge.list_merge_backends(),
        help="default: the library's (native: Triton on CUDA, fused C++ on CPU)",
    )
    p.add_argument("--shrink", type=int, default=None, help="divide C and H, W (quick: 8)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--copy-bytes", type=int, default=None)
    args = p.parse_args(argv)
    resolve_device(args.device)  # an unknown device is an error before any work
    quick = args.quick
    defaults = {
        "batch_sizes": [2] if quick else [32, 64, 128],
        "dtypes": ["fp32"] if quick else ["fp32", "bf16", "fp16"],
        "channels_last": [False] if quick else [False, True],
        "merge_backend": merge.get_merge_backend(),
        "shrink": 8 if quick else 1,
        "rounds": 2 if quick else 5,
        "min_run_time": 0.005 if quick else 0.2,
        "warmup": 1 if quick else 3,
        "copy_bytes": (1 << 22) if quick else (1 << 28),
    }
    return fill_defaults(args, defaults)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return harness.run_main("blocks", parse_args, run, argv)


if __name__ == "__main__":
    main()
