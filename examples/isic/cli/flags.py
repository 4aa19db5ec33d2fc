"""The flags every example script shares, and their checks.

Flags (docs/isic_pipelines.md, "Common flags (every script)")::

    --data-root DIR  --out DIR  --epochs N  --batch-size N  --image-size N  --workers N  --seed N
    --lr X  --device auto|cpu|cuda  --amp none|bf16|fp16  --channels-last  --compile  --resume
    --quick  --no-progress  --skip-bad  --bootstrap N  --ci-seed N

Hyper-parameter flags default to ``None`` in the parser and are resolved afterwards by
:func:`resolve_profile`: a value given on the command line wins, then the quick profile (``--quick``
or no ``--data-root``), then the paper's value.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from examples.run import AMP_DTYPES, fill_defaults

__all__ = [
    "ADDED_DEFAULTS",
    "MAY_CHANGE_ON_RESUME",
    "add_common_args",
    "check_common_args",
    "check_numbers",
    "resolve_profile",
    "resume_settings",
    "run_settings",
]


def add_common_args(parser: argparse.ArgumentParser, paper: Mapping[str, Any]) -> None:
    """Add the common flags; ``paper`` gives the defaults shown in ``--help`` (epochs, lr, ...)."""
    g = parser.add_argument_group("common")
    g.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="official ISIC layout; absent: the synthetic default (generated once)",
    )
    g.add_argument(
        "--out", type=Path, default=None, help="run folder (default: runs/<script>-<timestamp>)"
    )
    g.add_argument("--epochs", type=int, default=None, help=f"default {paper['epochs']}")
    g.add_argument("--batch-size", type=int, default=None, help=f"default {paper['batch_size']}")
    g.add_argument(
        "--image-size",
        type=int,
        default=None,
        help=f"network input size in pixels (default {paper['image_size']})",
    )
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    g.add_argument("--seed", type=int, default=0, help="seed for weights, sampling, augmentation")
    g.add_argument(
        "--lr", type=float, default=None, help=f"initial learning rate (default {paper['lr']})"
    )
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument(
        "--amp",
        choices=list(AMP_DTYPES),
        default="none",
        help="autocast dtype: bf16 on CPU or CUDA, fp16 on CUDA only",
    )
    g.add_argument("--channels-last", action="store_true", help="NHWC weights and inputs")
    g.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    g.add_argument(
        "--quick",
        action="store_true",
        help="a minutes-long smoke profile (few images, small input, 1-2 epochs)",
    )
    g.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no tqdm bars (logs only)"
    )
    g.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out images that are missing or cannot be decoded (listed in OUT/skipped.csv) "
        "instead of stopping",
    )
    g.add_argument(
        "--bootstrap",
        type=int,
        default=2000,
        help="resamples of the stratified bootstrap 95%% CI of every test AUC in metrics.json "
        "(default 2000; 0: no intervals)",
    )
    g.add_argument("--ci-seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    g.add_argument(
        "--select",
        choices=["best", "last"],
        default="best",
        help="the epoch whose weights the test set, figures and predictions use: best by the "
        "validation metric (the papers' protocol; default) or last, the end of a fixed schedule "
        "(its EMA weights under --recipe timm), for a validation split too small to pick an epoch",
    )


def check_numbers(
    args: argparse.Namespace,
    *,
    positive: Sequence[str] = (),
    non_negative: Sequence[str] = (),
    fraction: Sequence[str] = (),
    finite: Sequence[str] = (),
    at_least: Mapping[str, float] | None = None,
) -> None:
    """Raise ``ValueError`` naming the first flag whose value is out of range.

    ``positive``: > 0 (integers: at least 1); ``non_negative``: >= 0; ``fraction``: in [0, 1);
    ``finite``: any finite number; ``at_least``: ``{name: minimum}``. Values must be finite;
    ``None`` (not set) passes; a list (``nargs``) is checked item by item.
    """
    rules = [(n, "positive") for n in positive] + [(n, "non_negative") for n in non_negative]
    rules += [(n, "fraction") for n in fraction] + [(n, "finite") for n in finite]
    rules += [(n, float(m)) for n, m in (at_least or {}).items()]
    for name, rule in rules:
        value = getattr(args, name, None)
        for v in value if isinstance(value, list | tuple) else [value]:
            if v is None or isinstance(v, bool):
                continue
            integer = isinstance(v, int)
            if rule == "positive":
                ok, want = v > 0, "at least 1" if integer else "> 0"
            elif rule == "non_negative":
                ok, want = v >= 0, ">= 0"
            elif rule == "fraction":
                ok, want = 0 <= v < 1, "in [0, 1)"
            elif rule == "finite":
                ok, want = True, "a finite number"
            else:
                ok, want = v >= rule, f"at least {rule:g}"
            if not (math.isfinite(v) and ok):
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be {want}, got {value}")


def check_common_args(args: argparse.Namespace, min_image_size: int = 32) -> None:
    """Check the common flags once the profile is resolved (``ValueError`` naming the flag)."""
    check_numbers(
        args,
        positive=("epochs", "batch_size", "lr"),
        non_negative=("workers", "seed", "bootstrap", "ci_seed"),
        at_least={"image_size": min_image_size},
    )
    if getattr(args, "bootstrap", 0) == 1:
        raise ValueError("--bootstrap must be 0 (no intervals) or at least 2 resamples, got 1")


def resolve_profile(
    args: argparse.Namespace, paper: Mapping[str, Any], quick: Mapping[str, Any], use_quick: bool
) -> argparse.Namespace:
    """Fill every ``None`` attribute of ``args`` named in ``paper`` or ``quick``.

    Order of precedence: the command line, then ``quick`` (when ``use_quick``), then ``paper``.
    """
    if use_quick:
        return fill_defaults(args, quick, paper)
    return fill_defaults(args, paper, dict.fromkeys(quick))  # a quick-only key stays None


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every attribute of ``args``, paths as strings: ``config.json``'s settings and the run config
    stored in each checkpoint (which ``--resume`` compares)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


# flags added after checkpoints were first written, with the value that reproduces older runs
ADDED_DEFAULTS: dict[str, Any] = {"recipe": "paper"}

# common flags a resumed run may change: where it writes, how long it trains, how it reads the data
# and how it reports (not what the network, the data or the optimisation are)
MAY_CHANGE_ON_RESUME = frozenset({"epochs", "resume", "out", "workers", "device", "progress",
                                  "data_root", "patience", "bootstrap", "ci_seed", "select"})  # fmt: skip


def resume_settings(
    args: argparse.Namespace, may_change: frozenset[str] = MAY_CHANGE_ON_RESUME
) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint (the trainer's ``run_config``):
    every flag of :func:`run_settings` but ``may_change``. Under ``--recipe timm`` ``--epochs``
    must match too: it sets the length of the cosine schedule."""
    if getattr(args, "recipe", "paper") == "timm":
        may_change = may_change - {"epochs"}
    return {k: v for k, v in run_settings(args).items() if k not in may_change}
