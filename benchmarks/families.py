"""One residual block of each family ARL converts: saved activations and forward+backward time of the
ARL block against the plain block, measured side by side in one process.

Each block is taken, with its input shape at 224x224, from a randomly initialised network of that
family (a middle block with a skip connection): timm ResNet-50 (bottleneck), ResNetV2-50
(pre-activation), EfficientNet-B0 (inverted residual), ConvNeXt-Atto, RegNetY-400MF, and
torchvision's MobileNetV3-Large (inverted residual with a plain BatchNorm, which the merge fuses).

    python -m benchmarks.families --device cpu           # batch 8
    python -m benchmarks.families --quick                 # seconds; CI
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from typing import Any

import timm
import torch
import torchvision
from torch import nn

from attnblocks import convert_block, merge
from examples.run import AMP_DTYPES, autocast, fill_defaults

from . import harness
from .saved_tensors import saved_tensor_bytes
from .timing import compare_alternating

__all__ = ["FAMILIES", "block_of", "main", "run"]

# family -> (network builder, name of the block inside it)
FAMILIES: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "resnet": (lambda: timm.create_model("resnet50"), "layer2.1"),
    "resnetv2": (lambda: timm.create_model("resnetv2_50"), "stages.1.blocks.1"),
    "efficientnet": (lambda: timm.create_model("efficientnet_b0"), "blocks.2.1"),
    "convnext": (lambda: timm.create_model("convnext_atto"), "stages.1.blocks.1"),
    "regnet": (lambda: timm.create_model("regnety_004"), "s2.b2"),
    "torchvision-mobilenetv3": (
        lambda: torchvision.models.mobilenet_v3_large(),
        "features.5",
    ),
}


def block_of(family: str, image_size: int = 224) -> tuple[nn.Module, tuple[int, ...]]:
    """The family's block and the (C, H, W) of its input at ``image_size``."""
    build, name = FAMILIES[family]
    net = build().eval()
    block = net.get_submodule(name)
    shapes: list[tuple[int, ...]] = []
    handle = block.register_forward_pre_hook(
        lambda m, args: shapes.append(tuple(args[0].shape[1:]))
    )
    with torch.no_grad():
        net(torch.randn(1, 3, image_size, image_size))
    handle.remove()
    return copy.deepcopy(block), shapes[0]


def _step(block: nn.Module, x: torch.Tensor, amp: str) -> Callable[[], None]:
    block.train()
    grad = torch.randn_like(x)

    def fwd_bwd() -> None:
        with autocast(x.device, amp):
            out = block(x)
        out.backward(grad.to(out.dtype))

    return fwd_bwd


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = harness.setup_run(args)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    rows: list[dict[str, Any]] = []
    table: list[dict[str, Any]] = []
    for family in args.families:
        plain, (c, h, w) = block_of(family, args.image_size)
        plain = plain.to(device, memory_format=fmt)
        arl = convert_block(plain).to(device, memory_format=fmt)
        x = torch.randn(args.batch_size, c, h, w, device=device).to(memory_format=fmt)
        with autocast(device, args.amp):
            saved = {
                k: saved_tensor_bytes(m.train(), x.requires_grad_(True))
                for k, m in (("plain", plain), ("arl", arl))
            }
        x = x.detach().requires_grad_(True)
        cmp = compare_alternating(
            {"plain": _step(copy.deepcopy(plain), x, args.amp),
             "arl": _step(copy.deepcopy(arl), x, args.amp)},
            rounds=args.rounds, device=device, min_run_time=args.min_run_time, warmup=args.warmup,
        )  # fmt: skip
        ratio = cmp.ratios["arl"]
        params = {
            "family": family,
            "block": type(plain).__name__,
            "input": [c, h, w],
            "batch_size": args.batch_size,
            "amp": args.amp,
            "channels_last": args.channels_last,
            "merge_backend": merge.get_merge_backend(),
        }
        metrics = {
            "plain_saved_bytes": saved["plain"],
            "arl_saved_bytes": saved["arl"],
            "saved_ratio": saved["arl"] / saved["plain"],
            "plain_median_s": cmp.timings["plain"].median,
            "arl_median_s": cmp.timings["arl"].median,
            "ratio_median": ratio.median,
            "ratio_min": ratio.min,
            "ratio_max": ratio.max,
            "rounds": ratio.n,
        }
        rows.append({"name": family, "params": params, "metrics": metrics})
        table.append({
            "family": family, "block": params["block"], "input": f"{c}x{h}x{w}",
            "saved_ratio": metrics["saved_ratio"], "time_ratio": ratio.median,
            "ratio_min": ratio.min, "ratio_max": ratio.max,
        })  # fmt: skip
    return harness.finish_run("families", rows, table, args, device)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    harness.add_common_args(p)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--batch-size", type=int, default=None, help="default 8 (quick: 2)")
    p.add_argument("--image-size", type=int, default=None, help="default 224 (quick: 64)")
    p.add_argument("--amp", default="none", choices=list(AMP_DTYPES))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--warmup", type=int, default=None)
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "batch_size": 2 if quick else 8,
        "image_size": 64 if quick else 224,
        "rounds": 2 if quick else 7,
        "min_run_time": 0.005 if quick else 0.3,
        "warmup": 1 if quick else 2,
    }
    return fill_defaults(args, defaults)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return harness.run_main("families", parse_args, run, argv)


if __name__ == "__main__":
    main()
