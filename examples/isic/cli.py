"""The command-line interface every example script shares.

Flags (DESIGN.md, "The example scripts' common interface")::

    --data-root DIR  --out DIR  --epochs N  --batch-size N  --image-size N  --workers N  --seed N
    --lr X  --device auto|cpu|cuda  --amp none|bf16|fp16  --channels-last  --compile  --resume
    --quick  --no-progress  --skip-bad  --bootstrap N  --ci-seed N

Hyper-parameter flags default to ``None`` in the parser and are resolved afterwards by
:func:`resolve_profile`: a value given on the command line wins, then the quick profile (``--quick``
or no ``--data-root``), then the paper's value. ``OUT/config.json`` records the result together
with the library versions and the git commit.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import functools
import io
import json
import math
import os
import pickle
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..run.files import atomic_write
from .distributed import DistInfo, init_distributed
from .engine import AMP_DTYPES
from .runtime import RunError

try:  # POSIX: the run-folder lock; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = [
    "ISIC2017_LAYOUT",
    "LimitedDataset",
    "RUN_OUTPUTS",
    "add_common_args",
    "check_amp",
    "check_common_args",
    "check_numbers",
    "reading_weights",
    "check_layout",
    "check_not_empty",
    "default_out_dir",
    "describe_normalization",
    "environment_info",
    "input_normalization",
    "prepare_out_dir",
    "resolve_architecture",
    "resolve_device",
    "resolve_profile",
    "run_cli",
    "run_settings",
    "release_out_dir",
    "save_config",
    "script_main",
    "setup_device",
    "write_json",
    "write_skipped",
]

PROFILE_KEYS = ("epochs", "batch_size", "image_size", "lr")
REPO_ROOT = Path(__file__).resolve().parents[2]


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
    for key in dict(paper) | dict(quick):
        if getattr(args, key, None) is None:
            source = quick if use_quick and key in quick else paper
            setattr(args, key, source.get(key))
    return args


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU raises ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda: no CUDA device is available to this PyTorch "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu"
        )
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def check_amp(amp: str, device: torch.device) -> None:
    """``fp16`` autocast is for CUDA; on CPU only ``bf16`` (or ``none``) is accepted."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"--amp must be one of {list(AMP_DTYPES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; on CPU use --amp bf16")


def setup_device(name: str, amp: str) -> tuple[torch.device, DistInfo]:
    """:func:`resolve_device` and :func:`check_amp`, then join ``torchrun``'s process group, if any.

    Returns the device and this process's :class:`~examples.isic.distributed.DistInfo`; on CUDA
    the device is ``cuda:LOCAL_RANK``.
    """
    device = resolve_device(name)
    check_amp(amp, device)
    info = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    return device, info


def default_out_dir(script: str) -> Path:
    """``runs/<script>-<YYYYmmdd-HHMMSS>`` under the current folder."""
    return Path("runs") / f"{script}-{time.strftime('%Y%m%d-%H%M%S')}"


# What a run writes into its folder: any of them there means the folder holds a run.
RUN_OUTPUTS = ("config.json", "log.csv", "metrics.json", "predictions.csv", "checkpoints", "tb",
               "plots")  # fmt: skip
_HELD_LOCKS: dict[Path, int] = {}


def _lock_out_dir(out: Path) -> None:
    """Own ``out`` for this process: an exclusive ``flock`` on ``OUT/.lock``.

    The operating system drops the lock when the process ends, however it ends (a killed run leaves
    no stale lock). Raises ``ValueError`` when another process holds it.
    """
    if fcntl is None or out in _HELD_LOCKS:
        return
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ValueError(
                f"--out {out} is in use by another run (process {owner}); wait for it to end or "
                "choose another --out"
            ) from None
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # e.g. some NFS mounts
            print(f"warning: {out} does not support file locks ({exc.strerror}); nothing stops "
                  "another run from writing into it", file=sys.stderr)  # fmt: skip
            return
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD_LOCKS[out] = fd


def release_out_dir(out: str | os.PathLike) -> None:
    """Give up this process's lock on the run folder ``out`` (see :func:`prepare_out_dir`)."""
    fd = _HELD_LOCKS.pop(Path(out).expanduser().resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def script_main(main: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a script's ``main``: the run folders it locked are released when it returns or
    raises (a process that ends releases them anyway; this matters when ``main`` is called again
    in the same process)."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = set(_HELD_LOCKS)
        try:
            return main(*args, **kwargs)
        finally:
            for out in set(_HELD_LOCKS) - before:
                release_out_dir(out)

    return wrapper


def run_outputs(out: Path) -> list[str]:
    """The run outputs (:data:`RUN_OUTPUTS`) present in ``out``; empty folders do not count."""
    found = []
    for name in RUN_OUTPUTS:
        p = out / name
        if p.is_file() or (p.is_dir() and any(p.iterdir())):
            found.append(name + ("/" if p.is_dir() else ""))
    return found


def prepare_out_dir(out: Path, resume: bool, data_root: Path | None = None) -> Path:
    """Create, lock and check the run folder before anything is trained.

    The folder is owned by one process at a time (:func:`_lock_out_dir`; under ``torchrun`` rank 0
    calls this). Raises ``ValueError`` when it cannot be created or written, when it lies inside
    the data folder, when another run holds it, when ``resume`` is set but it holds no
    ``checkpoints/last.pt``, or when it already holds a run (any of :data:`RUN_OUTPUTS`) and
    ``resume`` is not set.
    """
    out = Path(out).expanduser().resolve()
    if data_root is not None:
        root = Path(data_root).expanduser().resolve()
        if out == root or root in out.parents:
            raise ValueError(f"--out {out} lies inside --data-root {root}; runs never write there")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"--out {out} is not a writable folder: {exc.strerror or exc}") from exc
    _lock_out_dir(out)
    last = out / "checkpoints" / "last.pt"
    found = run_outputs(out)
    if resume and not last.is_file():
        if found:
            raise ValueError(
                f"--resume: no checkpoint at {last}: the run in {out} stopped before the end of "
                f"its first epoch (it holds {', '.join(found)}); delete them or choose another "
                "--out, and start without --resume"
            )
        raise ValueError(f"--resume: no checkpoint at {last}; start without --resume")
    if not resume and found:
        raise ValueError(
            f"--out {out} already holds a run ({', '.join(found)}); pass --resume to continue it "
            "or choose another --out"
        )
    return out


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment_info() -> dict[str, Any]:
    """Versions of python and the libraries a run depends on, the host and the git commit."""
    import numpy
    import timm
    import torchvision

    import attnblocks

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "attnblocks": attnblocks.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
        "argv": sys.argv,
    }


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (temp file in the same folder, then rename)."""
    text = json.dumps(obj, indent=2, default=str) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode()))


def _base_dataset(dataset: Any) -> Any:
    """The ISIC dataset under the wrappers of the scripts (limits, subsets, boxes)."""
    for _ in range(8):
        if hasattr(dataset, "bad_files"):
            return dataset
        inner = getattr(dataset, "dataset", None)
        dataset = inner if inner is not None else getattr(dataset, "base", None)
    return dataset


def write_skipped(out: Path, splits: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """List the images the datasets of ``splits`` left out (``--skip-bad``) in ``OUT/skipped.csv``
    (columns split, image_id, file, reason) and print them; returns the rows."""
    rows = []
    for name, dataset in splits.items():
        base = _base_dataset(dataset)
        rows += [(name, *bad) for bad in getattr(base, "bad_files", [])]
    path = Path(out) / "skipped.csv"
    if not rows:
        path.unlink(missing_ok=True)
        return rows
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["split", "image_id", "file", "reason"])
    writer.writerows(rows)
    atomic_write(path, lambda fh: fh.write(buf.getvalue().encode()))
    print(f"--skip-bad: left out {len(rows)} images that cannot be read (listed in {path}):")
    for split, image_id, _, reason in rows[:10]:
        print(f"  {split} {image_id}: {reason}")
    if len(rows) > 10:
        print(f"  ... and {len(rows) - 10} more")
    return rows


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every attribute of ``args``, paths as strings: ``config.json``'s settings and the run config
    stored in each checkpoint (which ``--resume`` compares)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def save_config(out: Path, args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """Write ``OUT/config.json``: every resolved setting, ``extra`` and :func:`environment_info`."""
    config = {"settings": run_settings(args), **extra, "environment": environment_info()}
    write_json(Path(out) / "config.json", config)
    return config


@contextlib.contextmanager
def reading_weights(path: str | os.PathLike | None, flag: str = "--weights"):
    """Report a weights file that cannot be read or loaded (truncated, corrupted, other shapes) as
    a ``ValueError`` naming ``flag`` and the file instead of torch's internal error."""
    try:
        yield
    except (RuntimeError, ValueError, pickle.UnpicklingError, EOFError) as err:
        if path is None or str(err).startswith(flag):  # no file, or the message names it already
            raise
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{flag} {path}: cannot load these weights ({reason})") from err


def resolve_architecture(
    name: str, weights: str | os.PathLike | None, flag: str = "--backbone"
) -> tuple[str, str]:
    """The timm architecture to build for ``name`` and a local ``weights`` file, and a line that
    says which (and why, when it differs: a checkpoint ported from TensorFlow needs the ``tf_``
    variant; see :func:`attnblocks.architecture_for_weights`)."""
    import attnblocks as ab

    if weights is not None and not Path(weights).is_file():
        raise ValueError(f"--weights {weights}: no such file")
    try:
        arch, why = ab.architecture_for_weights(name, weights)
    except ValueError as err:  # a truncated or foreign file
        raise ValueError(f"--weights {weights}: cannot load these weights ({err})") from err
    if why is None:
        return arch, f"architecture {arch}"
    return arch, f"architecture {arch} ({flag} {name} with --weights {weights}: {why})"


def input_normalization(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of the model's ``pretrained_cfg`` (timm's preprocessing of its weights);
    ImageNet's when the model has none. Every transform of a run (training, validation, test
    views, predictions, figures) normalises with these."""
    from .data.transforms import IMAGENET_MEAN, IMAGENET_STD

    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3 or not all(v > 0 and math.isfinite(v) for v in std):
        raise ValueError(
            f"{type(model).__name__}.pretrained_cfg has mean {mean} / std {std}; expected three "
            "channel means and three positive stds"
        )
    return mean, std


def describe_normalization(mean: Sequence[float], std: Sequence[float]) -> str:
    """``"mean (0.5, 0.5, 0.5) std (0.5, 0.5, 0.5)"`` for the log."""
    return f"mean ({', '.join(f'{v:g}' for v in mean)}) std ({', '.join(f'{v:g}' for v in std)})"


# errors of the environment that a run reports in one line (full disk, permissions, ...)
_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
               errno.EFBIG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR}  # fmt: skip


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)``; bad input (``ValueError``, a missing file), a divergence or a failed
    write (:class:`~examples.isic.runtime.RunError`) and errors of the environment (full disk, no
    permission) print one ``error: ...`` line and exit with code 2."""
    try:
        main(argv)
    except (ValueError, RunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:
        if not (isinstance(exc, FileNotFoundError) or exc.errno in _ENV_ERRNOS):
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        raise SystemExit(2) from None


ISIC2017_LAYOUT = (
    "ISIC-2017_Training_Data/",
    "ISIC-2017_Training_Part3_GroundTruth.csv",
    "ISIC-2017_Validation_Data/",
    "ISIC-2017_Validation_Part3_GroundTruth.csv",
    "ISIC-2017_Test_v2_Data/",
    "ISIC-2017_Test_v2_Part3_GroundTruth.csv",
)


def check_layout(root: Path, expected: Sequence[str], name: str) -> Path:
    """Raise one ``ValueError`` listing what ``root`` lacks of ``expected`` and what it holds.

    Entries ending in ``/`` must be folders, the others files.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"--data-root {root} is not a folder; expected the official {name} layout")
    missing = [
        e
        for e in expected
        if not ((root / e.rstrip("/")).is_dir() if e.endswith("/") else (root / e).is_file())
    ]
    if missing:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
        shown = ", ".join(found[:12]) + (f", ... ({len(found)} entries)" if len(found) > 12 else "")
        raise ValueError(
            f"--data-root {root} is not an official {name} layout: expected {', '.join(expected)}; "
            f"missing {', '.join(missing)}; found: {shown or 'an empty folder'}"
        )
    return root


class LimitedDataset(torch.utils.data.Dataset):
    """At most ``n // num_classes`` images of each class of ``dataset``, in dataset order.

    For the quick profile (``--limit``). Keeps ``labels``, ``ids`` and the dataset's CSV attributes
    so samplers and prediction writers work unchanged.
    """

    def __init__(self, dataset: Any, n: int) -> None:
        import numpy as np

        if n < 1:
            raise ValueError(f"--limit must be >= 1, got {n}")
        labels = np.asarray(dataset.labels)
        classes = np.unique(labels)
        per = max(1, n // len(classes))
        keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per] for c in classes]))
        self.dataset, self.indices = dataset, keep.tolist()
        self.labels = labels[keep]
        self.ids = [dataset.ids[i] for i in self.indices]
        for name in ("class_names", "csv_columns", "csv_id_column", "task"):
            setattr(self, name, getattr(dataset, name))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.indices[i]]

    def summary(self) -> str:
        return f"{len(self)} of {self.dataset.summary()}"


def check_not_empty(splits: Mapping[str, Any], root: Path) -> None:
    """Raise ``ValueError`` naming the first split of ``splits`` that holds no image."""
    for name, dataset in splits.items():
        if len(dataset) == 0:
            summary = dataset.summary() if hasattr(dataset, "summary") else type(dataset).__name__
            raise ValueError(
                f"the {name!r} split of {root} is empty ({summary}); check the data folder, "
                "--limit and the split fractions"
            )
