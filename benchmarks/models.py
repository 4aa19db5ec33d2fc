"""Whole-model training and inference steps: each attention model against its plain counterpart.

Pairs (same run, alternating, paired ratios; see ``benchmarks/README.md``):

- ``resnet50``: ARL-ResNet-50 (ARL-CNN50) vs timm ResNet-50;
- ``resnet14``: ARL-CNN14 vs ResNet-14 (bottleneck, layers [1, 1, 1, 1]);
- ``vgg16``: AttnMel-VGG16 (gates on pool-3/pool-4) vs VGG-16-GAP.

A training step is ``zero_grad + forward + cross-entropy + backward + SGD(momentum) step``; an
inference step is an ``eval()`` forward under ``torch.inference_mode``.

    python -m benchmarks.models --device cpu                 # batch 8, 224x224, all pairs
    python -m benchmarks.models --device cuda --amp bf16 --channels-last
    python -m benchmarks.models --quick                      # seconds; CI
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import nn

import attnblocks as ab
from attnblocks import merge
from examples.run import AMP_DTYPES, autocast, fill_defaults

from . import harness
from .timing import compare_alternating

__all__ = ["PAIRS", "ModelPair", "build_pair", "main", "make_step", "run"]


@dataclass(frozen=True)
class ModelPair:
    """A plain model and its attention counterpart; ``arl`` pairs take a normalization."""

    plain_name: str
    attn_name: str
    build_plain: Callable[[int], nn.Module]
    build_attn: Callable[[nn.Module, int, str], nn.Module]  # (plain, num_classes, normalization)
    arl: bool


def _arl_from(plain: nn.Module, num_classes: int, normalization: str) -> nn.Module:
    return ab.ARLWrapper(plain, normalization=normalization)


PAIRS: dict[str, ModelPair] = {
    "resnet50": ModelPair(
        "ResNet-50",
        "ARL-ResNet-50",
        lambda nc: timm.create_model("resnet50", pretrained=False, num_classes=nc),
        _arl_from,
        arl=True,
    ),
    "resnet14": ModelPair(
        "ResNet-14", "ARL-CNN14", lambda nc: ab.resnet14(num_classes=nc), _arl_from, arl=True
    ),
    "vgg16": ModelPair(
        "VGG-16-GAP",
        "AttnMel-VGG16",
        lambda nc: ab.attnmel_vgg16(num_classes=nc, head="gap"),
        lambda plain, nc, _norm: ab.attnmel_vgg16(num_classes=nc, head="attention"),
        arl=False,
    ),
}


def build_pair(
    name: str, *, num_classes: int = 2, normalization: str = "spatial", seed: int = 0
) -> tuple[nn.Module, nn.Module]:
    """``(plain, attention)`` models of pair ``name``, seeded; the ARL model copies the plain weights."""
    if name not in PAIRS:
        raise ValueError(f"unknown model pair {name!r}; known: {sorted(PAIRS)}")
    pair = PAIRS[name]
    torch.manual_seed(seed)
    plain = pair.build_plain(num_classes)
    torch.manual_seed(seed)
    return plain, pair.build_attn(plain, num_classes, normalization)


def make_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mode: str,
    *,
    amp: str = "none",
    merge_backend: str | None = None,
    compile: bool = False,
) -> Callable[[], None]:
    """A closure running one ``"train"`` or ``"infer"`` step of ``model`` on ``(x, y)``.

    ``merge_backend`` is selected at every call, so that two closures with different backends can
    be timed alternately in one process. ``compile``: the model runs through ``torch.compile``
    (compiled at the first, untimed warm-up call).
    """
    device = x.device
    run_model = torch.compile(model) if compile else model
    if mode == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()

        def step() -> None:
            if merge_backend is not None:
                merge.set_merge_backend(merge_backend)
            opt.zero_grad(set_to_none=True)
            with autocast(device, amp):
                loss = loss_fn(run_model(x).float(), y)
            loss.backward()
            opt.step()

        return step
    if mode == "infer":
        model.eval()

        def infer() -> None:
            if merge_backend is not None:
                merge.set_merge_backend(merge_backend)
            with (
                torch.no_grad() if compile else torch.inference_mode(),
                autocast(device, amp),
            ):
                run_model(x)

        return infer
    raise ValueError(f"unknown mode {mode!r}; expected 'train' or 'infer'")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark described by parsed ``args``; return the results document."""
    device = harness.setup_run(args)
    previous_backend = merge.get_merge_backend()
    rows: list[dict[str, Any]] = []
    table: list[dict[str, Any]] = []
    try:
        for name in args.pairs:
            plain, attn = build_pair(name, normalization=args.normalization, seed=args.seed)
            memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
            plain = plain.to(device, memory_format=memory_format)
            attn = attn.to(device, memory_format=memory_format)
            gen = torch.Generator().manual_seed(args.seed)
            x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen)
            x = x.to(device, memory_format=memory_format)
            y = torch.randint(0, 2, (args.batch_size,), generator=gen).to(device)
            pair = PAIRS[name]
            for mode in args.modes:
                variants = {
                    pair.plain_name: make_step(
                        copy.deepcopy(plain), x, y, mode, amp=args.amp, compile=args.compile
                    )
                }
                backends = args.merge_backends if pair.arl else [None]
                for backend in backends:
                    label = pair.attn_name if backend is None else f"{pair.attn_name} [{backend}]"
                    variants[label] = make_step(
                        copy.deepcopy(attn), x, y, mode, amp=args.amp, merge_backend=backend,
                        compile=args.compile,
                    )  # fmt: skip
                cmp = compare_alternating(
                    variants,
                    rounds=args.rounds,
                    device=device,
                    min_run_time=args.min_run_time,
                    warmup=args.warmup,
                )
                base = cmp.timings[pair.plain_name]
                for label, ratio in cmp.ratios.items():
                    t = cmp.timings[label]
                    metrics = {
                        "plain_median_s": base.median,
                        "plain_iqr_s": base.iqr,
                        "attn_median_s": t.median,
                        "attn_iqr_s": t.iqr,
                        "plain_images_per_s": args.batch_size / base.median,
                        "attn_images_per_s": args.batch_size / t.median,
                        "ratio_median": ratio.median,
                        "ratio_iqr": ratio.iqr,
                        "ratio_min": ratio.min,
                        "ratio_max": ratio.max,
                        "rounds": ratio.n,
                    }
                    params = {
                        "pair": name,
                        "plain": pair.plain_name,
                        "model": label,
                        "mode": mode,
                        "batch_size": args.batch_size,
                        "image_size": args.image_size,
                        "amp": args.amp,
                        "channels_last": args.channels_last,
                        "compile": args.compile,
                        "normalization": args.normalization if pair.arl else None,
                    }
                    rows.append(
                        {"name": f"{name}/{mode}/{label}", "params": params, "metrics": metrics}
                    )
                    table.append(
                        {
                            "model": label,
                            "vs": pair.plain_name,
                            "mode": mode,
                            "plain_s": base.median,
                            "model_s": t.median,
                            "ratio": ratio.median,
                            "ratio_min": ratio.min,
                            "ratio_max": ratio.max,
                        }
                    )
    finally:
        merge.set_merge_backend(previous_backend)
    return harness.finish_run("models", rows, table, args, device)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    harness.add_common_args(p)
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    p.add_argument("--batch-size", type=int, default=None, help="default 8 (quick: 2)")
    p.add_argument("--image-size", type=int, default=None, help="default 224 (quick: 32)")
    p.add_argument("--normalization", default="spatial", choices=ab.list_normalizations())
    p.add_argument(
        "--merge-backends",
        nargs="+",
        default=None,
        choices=merge.list_merge_backends(),
        help="ARL merge backends to time against the plain model (default: the library's, native)",
    )
    p.add_argument("--amp", default="none", choices=list(AMP_DTYPES))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="time the models under torch.compile")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per variant")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "batch_size": 2 if quick else 8,
        "image_size": 32 if quick else 224,
        "rounds": 2 if quick else 7,
        "min_run_time": 0.01 if quick else 0.5,
        "warmup": 1 if quick else 2,
        "merge_backends": [merge.get_merge_backend()],
    }
    return fill_defaults(args, defaults)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return harness.run_main("models", parse_args, run, argv)


if __name__ == "__main__":
    main()
