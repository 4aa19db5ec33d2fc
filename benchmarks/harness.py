"""Shared benchmark harness: timing, alternating A/B comparison, saved-activation bytes, metadata.

Method (see ``benchmarks/README.md``):

- **Timing.** On CPU, :func:`time_fn` uses ``torch.utils.benchmark.Timer.blocked_autorange`` (the
  statement is repeated in blocks until ``min_run_time`` has passed; one sample per block). On CUDA it
  uses CUDA events around each call, after a synchronised warm-up. Both return a :class:`Timing`
  (median, inter-quartile range, min, max of the per-call times).
- **A/B comparison.** :func:`compare_alternating` measures several variants in the same process, in
  rounds, alternating their order every round (A B, B A, A B, ...), so that slow drifts of a shared
  machine (other jobs, thermal state) hit every variant alike. Ratios are computed *per round* (paired)
  and summarised by their median and spread.
- **Saved activations.** :class:`SavedTensorMeter` counts the bytes of the tensors that autograd saves
  for backward (``torch.autograd.graph.saved_tensors_hooks``), deduplicated by storage so that a
  tensor saved by two ops (a ReLU output that the next convolution also saves) counts once. Parameters
  and buffers can be excluded, so that the figure is the activation memory of a training step.
- **Results.** :func:`write_results` writes one JSON file per run with a fixed schema
  (:data:`SCHEMA`, checked by :func:`validate_results`), atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.utils.benchmark as tbench

__all__ = [
    "RESULTS_DIR",
    "SCHEMA",
    "Comparison",
    "SavedTensorMeter",
    "Timing",
    "add_common_args",
    "autocast",
    "compare_alternating",
    "format_table",
    "make_payload",
    "resolve_device",
    "run_metadata",
    "saved_tensor_bytes",
    "setup_run",
    "default_output",
    "fill_defaults",
    "finish_run",
    "run_main",
    "time_fn",
    "validate_results",
    "write_results",
]

SCHEMA = "attnblocks.benchmarks/v1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
_REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# Run metadata and devices
# --------------------------------------------------------------------------------------------------


def _git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_device(name: str) -> torch.device:
    """Map ``"auto" | "cpu" | "cuda" | "cuda:N"`` to a device; ``auto`` picks CUDA when available.

    Raises:
        ValueError: for an unknown name, or ``cuda`` requested on a machine without CUDA.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}; expected 'auto', 'cpu' or 'cuda[:N]'")


def run_metadata(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Everything needed to interpret a figure later: code, software, hardware and threads."""
    device = torch.device(device)
    meta: dict[str, Any] = {
        **_git_commit(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "device_name": _cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "num_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "argv": sys.argv[1:],
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta["device_name"] = props.name
        meta["device_memory_bytes"] = props.total_memory
        meta["device_capability"] = f"{props.major}.{props.minor}"
    try:
        import triton  # noqa: F401  (optional)

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    return meta


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Summary of repeated timings of one callable, in seconds per call."""

    median: float
    iqr: float
    min: float
    max: float
    n: int
    times: list[float] = field(default_factory=list)

    @classmethod
    def from_times(cls, times: Sequence[float]) -> Timing:
        if not times:
            raise ValueError("no timings to summarise")
        ts = sorted(float(t) for t in times)
        q1, q3 = _quartiles(ts)
        return cls(
            median=statistics.median(ts), iqr=q3 - q1, min=ts[0], max=ts[-1], n=len(ts), times=ts
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quartiles(ts: Sequence[float]) -> tuple[float, float]:
    if len(ts) < 2:
        return ts[0], ts[0]
    q = statistics.quantiles(ts, n=4, method="inclusive")
    return q[0], q[2]


_AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``"bf16"`` or ``"fp16"``; no autocast for ``"none"`` or ``"fp32"``."""
    if amp in ("none", "fp32"):
        return contextlib.nullcontext()
    if amp not in _AMP_DTYPES:
        raise ValueError(f"unknown autocast dtype {amp!r}; expected none, fp32, bf16 or fp16")
    return torch.autocast(device.type, dtype=_AMP_DTYPES[amp])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], Any],
    *,
    device: torch.device | str = "cpu",
    min_run_time: float = 0.2,
    warmup: int = 1,
    cuda_iters: int = 10,
) -> Timing:
    """Time ``fn()`` and return the per-call :class:`Timing`.

    CPU: ``warmup`` untimed calls, then ``Timer.blocked_autorange(min_run_time)``; each block gives
    one sample (its mean per call). CUDA: ``warmup`` calls, a synchronise, then ``cuda_iters`` calls,
    each between two CUDA events (device time, no host-side launch gaps between calls counted).
    """
    device = torch.device(device)
    if warmup < 0 or min_run_time <= 0 or cuda_iters < 1:
        raise ValueError(
            f"time_fn: need warmup >= 0, min_run_time > 0, cuda_iters >= 1; "
            f"got {warmup}, {min_run_time}, {cuda_iters}"
        )
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(cuda_iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(cuda_iters)]
        for start, end in zip(starts, ends, strict=True):
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return Timing.from_times(
            [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends, strict=True)]
        )
    timer = tbench.Timer(
        stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads(), label="attnblocks"
    )
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return Timing.from_times(m.times)


@dataclass
class Comparison:
    """Result of :func:`compare_alternating`.

    ``timings[name]``: summary of the per-round medians of each variant. ``ratios[name]``: summary
    of the per-round ratio ``variant / baseline`` (paired within a round). ``rounds``: raw per-round
    medians, in measurement order.
    """

    baseline: str
    timings: dict[str, Timing]
    ratios: dict[str, Timing]
    rounds: list[dict[str, float]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "timings": {k: v.as_dict() for k, v in self.timings.items()},
            "ratios": {k: v.as_dict() for k, v in self.ratios.items()},
            "rounds": self.rounds,
        }


def compare_alternating(
    fns: Mapping[str, Callable[[], Any]],
    *,
    baseline: str | None = None,
    rounds: int = 5,
    device: torch.device | str = "cpu",
    min_run_time: float = 0.2,
    warmup: int = 1,
    cuda_iters: int = 10,
) -> Comparison:
    """Measure several variants in the same process, alternating their order every round.

    Round ``r`` measures the variants in the given order when ``r`` is even and in reverse order
    when odd; each measurement is a :func:`time_fn` whose median is the round's figure. The ratio of
    each variant to ``baseline`` (default: the first) is taken within each round, then summarised.
    """
    if not fns:
        raise ValueError("compare_alternating needs at least one variant")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = list(fns)
    baseline = names[0] if baseline is None else baseline
    if baseline not in fns:
        raise ValueError(f"baseline {baseline!r} is not one of the variants {names}")
    for name in names:  # warm every variant once before the first timed round
        for _ in range(warmup):
            fns[name]()
    per_round: list[dict[str, float]] = []
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        row: dict[str, float] = {}
        for name in order:
            t = time_fn(
                fns[name], device=device, min_run_time=min_run_time, warmup=0, cuda_iters=cuda_iters
            )
            row[name] = t.median
        per_round.append(row)
    timings = {n: Timing.from_times([row[n] for row in per_round]) for n in names}
    ratios = {
        n: Timing.from_times([row[n] / row[baseline] for row in per_round])
        for n in names
        if n != baseline
    }
    return Comparison(baseline=baseline, timings=timings, ratios=ratios, rounds=per_round)


# --------------------------------------------------------------------------------------------------
# Saved activations
# --------------------------------------------------------------------------------------------------


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


class SavedTensorMeter:
    """Count the bytes autograd saves for backward while the context is open.

    Deduplicated by storage: a tensor saved by several ops (or several views of one storage) counts
    once, with the size of its whole storage, which is what stays alive until backward. Storages of
    ``exclude`` (typically the model's parameters and buffers) are not counted.

    Example:
        >>> x = torch.randn(4, 8, requires_grad=True)
        >>> with SavedTensorMeter() as meter:
        ...     y = torch.relu(x * 2).sum()   # mul saves nothing (scalar), relu saves its output
        >>> meter.bytes
        128
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._exclude = {_storage_key(t) for t in exclude}
        self._seen: dict[tuple[str, int], int] = {}
        self._alive: list[torch.Tensor] = []  # keeps storages alive: no address reuse while open
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None
        self.calls = 0

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        key = _storage_key(t)
        if key not in self._exclude and key not in self._seen:
            self._seen[key] = t.untyped_storage().nbytes()
            self._alive.append(t)
        return t

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def bytes(self) -> int:
        """Total bytes of the distinct saved storages."""
        return sum(self._seen.values())

    @property
    def count(self) -> int:
        """Number of distinct saved storages."""
        return len(self._seen)

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hooks is not None:
            self._hooks.__exit__(*exc)
        self._hooks = None
        self._alive.clear()


def saved_tensor_bytes(
    model: torch.nn.Module, inputs: torch.Tensor, *, exclude_params: bool = True
) -> int:
    """Bytes of activations saved by one forward of ``model(inputs)`` (see :class:`SavedTensorMeter`).

    Runs the forward with gradients enabled, counts, then frees the graph without a backward.
    """
    exclude = list(model.parameters()) + list(model.buffers()) if exclude_params else []
    with SavedTensorMeter(exclude=exclude) as meter:
        out = model(inputs)
    del out
    return meter.bytes


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


def make_payload(
    benchmark: str,
    results: list[dict[str, Any]],
    *,
    config: Mapping[str, Any],
    metadata: Mapping[str, Any],
) -> dict[str, Any]:
    """Assemble a results document with the fixed schema.

    ``results`` rows are ``{"name": str, "params": {...}, "metrics": {str: number | None}}``; the
    units are in the metric names (``*_s`` seconds, ``*_bytes``, ``images_per_s``, ``*_ratio``).
    """
    payload = {
        "schema": SCHEMA,
        "benchmark": benchmark,
        "metadata": dict(metadata),
        "config": dict(config),
        "results": list(results),
    }
    validate_results(payload)
    return payload


def validate_results(payload: Mapping[str, Any]) -> None:
    """Check a results document against the schema; raise ``ValueError`` naming what is wrong."""
    required = {"schema": str, "benchmark": str, "metadata": dict, "config": dict, "results": list}
    for key, typ in required.items():
        if not isinstance(payload.get(key), typ):
            raise ValueError(f"results document: {key!r} must be a {typ.__name__}")
    if payload["schema"] != SCHEMA:
        raise ValueError(f"results document: schema {payload['schema']!r}, expected {SCHEMA!r}")
    for key in ("commit", "torch", "device", "device_name", "num_threads", "platform"):
        if key not in payload["metadata"]:
            raise ValueError(f"results document: metadata lacks {key!r}")
    for i, row in enumerate(payload["results"]):
        if not isinstance(row, dict) or set(row) != {"name", "params", "metrics"}:
            raise ValueError(f"results row {i}: expected keys name, params, metrics; got {row!r}")
        if not isinstance(row["name"], str) or not isinstance(row["params"], dict):
            raise ValueError(f"results row {i}: name must be str and params a dict")
        if not isinstance(row["metrics"], dict):
            raise ValueError(f"results row {i}: metrics must be a dict")
        for k, v in row["metrics"].items():
            if v is not None and not isinstance(v, (int, float)):
                raise ValueError(
                    f"results row {i}: metric {k!r} is {type(v).__name__}, not a number"
                )


def write_results(payload: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Validate and write ``payload`` as JSON to ``path`` atomically (temp file + ``os.replace``)."""
    validate_results(payload)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table of ``rows`` (dicts) with the given columns, numbers to 4 significant digits."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def add_common_args(parser: argparse.ArgumentParser, *, default_device: str = "auto") -> None:
    """Flags every benchmark shares: device, threads, quick profile, rounds, output, seed."""
    parser.add_argument("--device", default=default_device, help="auto | cpu | cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="a seconds-long profile (CI)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds")
    parser.add_argument("--min-run-time", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output file (default: benchmarks/results/<name>-<device>.json for full runs; "
        "quick runs write only when --out is given)",
    )


def setup_run(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and ``--seed`` and resolve ``--device``."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return resolve_device(args.device)


def default_output(name: str, args: argparse.Namespace, device: torch.device) -> Path | None:
    """Where a run writes its JSON: ``--out``, else ``results/<name>-<device>.json`` unless quick."""
    if args.out is not None:
        return args.out
    if args.quick:
        return None
    return RESULTS_DIR / f"{name}-{device.type}.json"


def fill_defaults(args: argparse.Namespace, defaults: Mapping[str, Any]) -> argparse.Namespace:
    """Set every argument left at ``None`` to its profile default (``--quick`` or full)."""
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def finish_run(
    benchmark: str,
    rows: list[dict[str, Any]],
    table: Sequence[Mapping[str, Any]],
    args: argparse.Namespace,
    device: torch.device,
    **extra_config: Any,
) -> dict[str, Any]:
    """Print ``table`` and return the results document of a run: ``args`` (and ``extra_config``) as
    its configuration, the metadata of ``device``."""
    print(format_table(table, list(table[0]) if table else []))
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(extra_config)
    return make_payload(benchmark, rows, config=config, metadata=run_metadata(device))


def run_main(
    name: str,
    parse_args: Callable[[list[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace], dict[str, Any]],
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """A benchmark's ``main``: parse, run, write the JSON results where :func:`default_output` says."""
    args = parse_args(argv)
    payload = run(args)
    out = default_output(name, args, resolve_device(args.device))
    if out is not None:
        print(f"wrote {write_results(payload, out)}")
    return payload
