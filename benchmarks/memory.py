"""Activation memory of each attention model against its plain counterpart.

For every pair of :data:`benchmarks.models.PAIRS` (and, for ARL, every normalization and merge
backend) it reports:

- **saved-activation bytes**: the tensors autograd keeps for backward after one training-mode
  forward, deduplicated by storage, parameters and buffers excluded
  (:class:`benchmarks.saved_tensors.SavedTensorMeter`). Deterministic: the same on every machine with the
  same input shape and dtype.
- **peak memory** (CUDA only): ``torch.cuda.max_memory_allocated`` over forward + backward, minus
  what was allocated before.

    python -m benchmarks.memory                      # batch 8, 224x224, CPU or CUDA (auto)
    python -m benchmarks.memory --quick              # seconds; CI
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

import attnblocks as ab
from attnblocks import merge
from examples.run import AMP_DTYPES, autocast, fill_defaults

from . import harness
from .models import PAIRS, build_pair
from .saved_tensors import saved_tensor_bytes

__all__ = ["main", "measure", "peak_bytes", "run"]


def peak_bytes(model: torch.nn.Module, x: torch.Tensor, amp: str = "none") -> int | None:
    """Peak CUDA memory of forward + backward above the memory in use before (None on CPU)."""
    if x.device.type != "cuda":
        return None
    torch.cuda.synchronize(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    before = torch.cuda.memory_allocated(x.device)
    with autocast(x.device, amp):
        out = model(x)
    out.float().sum().backward()
    torch.cuda.synchronize(x.device)
    peak = torch.cuda.max_memory_allocated(x.device) - before
    model.zero_grad(set_to_none=True)
    return int(peak)


def measure(model: torch.nn.Module, x: torch.Tensor, amp: str = "none") -> dict[str, int | None]:
    """``{"saved_bytes": ..., "peak_bytes": ...}`` of one training-mode step of ``model`` on ``x``
    (under ``amp`` autocast: ``none``, ``bf16`` or ``fp16``)."""
    model.train()
    with autocast(x.device, amp):
        saved = saved_tensor_bytes(model, x)
    return {"saved_bytes": saved, "peak_bytes": peak_bytes(model, x, amp)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark described by parsed ``args``; return the results document."""
    device = harness.setup_run(args)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    x = x.to(device, memory_format=memory_format)
    previous = merge.get_merge_backend()
    rows: list[dict[str, Any]] = []
    try:
        for name in args.pairs:
            pair = PAIRS[name]
            norms = args.normalizations if pair.arl else [None]
            backends = args.merge_backends if pair.arl else [None]
            plain_stats: dict[str, int | None] | None = None
            for norm in norms:
                plain, attn = build_pair(name, normalization=norm or "spatial", seed=args.seed)
                plain = plain.to(device, memory_format=memory_format)
                attn = attn.to(device, memory_format=memory_format)
                if plain_stats is None:
                    plain_stats = measure(plain, x, args.amp)
                for backend in backends:
                    if backend is not None:
                        merge.set_merge_backend(backend)
                    stats = measure(attn, x, args.amp)
                    ratio = stats["saved_bytes"] / plain_stats["saved_bytes"]
                    peak_ratio = (
                        stats["peak_bytes"] / plain_stats["peak_bytes"]
                        if stats["peak_bytes"] and plain_stats["peak_bytes"]
                        else None
                    )
                    params = {
                        "pair": name,
                        "plain": pair.plain_name,
                        "model": pair.attn_name,
                        "normalization": norm,
                        "merge_backend": backend,
                        "batch_size": args.batch_size,
                        "image_size": args.image_size,
                        "channels_last": args.channels_last,
                        "amp": args.amp,
                    }
                    metrics = {
                        "plain_saved_bytes": plain_stats["saved_bytes"],
                        "attn_saved_bytes": stats["saved_bytes"],
                        "saved_ratio": ratio,
                        "plain_peak_bytes": plain_stats["peak_bytes"],
                        "attn_peak_bytes": stats["peak_bytes"],
                        "peak_ratio": peak_ratio,
                    }
                    label = "/".join(str(p) for p in (name, norm, backend) if p is not None)
                    rows.append({"name": label, "params": params, "metrics": metrics})
    finally:
        merge.set_merge_backend(previous)
    mib = 2.0**20
    table = [
        {
            "model": r["params"]["model"],
            "normalization": r["params"]["normalization"] or "-",
            "merge": r["params"]["merge_backend"] or "-",
            "plain_MiB": r["metrics"]["plain_saved_bytes"] / mib,
            "model_MiB": r["metrics"]["attn_saved_bytes"] / mib,
            "saved_ratio": r["metrics"]["saved_ratio"],
            "peak_ratio": r["metrics"]["peak_ratio"],
        }
        for r in rows
    ]
    print(
        f"saved activations, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
        f"{device.type}"
    )
    return harness.finish_run("memory", rows, table, args, device)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    harness.add_common_args(p)
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--batch-size", type=int, default=None, help="default 8 (quick: 2)")
    p.add_argument("--image-size", type=int, default=None, help="default 224 (quick: 64)")
    p.add_argument(
        "--normalizations",
        nargs="+",
        default=ab.list_normalizations(),
        choices=ab.list_normalizations(),
    )
    p.add_argument(
        "--merge-backends",
        nargs="+",
        default=list(dict.fromkeys([merge.get_merge_backend(), "eager", "reference"])),
        choices=merge.list_merge_backends(),
        help="default: the library's default backend (native), eager and reference",
    )
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", default="none", choices=list(AMP_DTYPES))
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {"batch_size": 2 if quick else 8, "image_size": 64 if quick else 224}
    return fill_defaults(args, defaults)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return harness.run_main("memory", parse_args, run, argv)


if __name__ == "__main__":
    main()
