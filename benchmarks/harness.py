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

Devices (``--device``), the autocast table, the environment record, atomic writes and the filling
of profile defaults are the run set-up the example scripts use too: :mod:`examples.run`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.utils.benchmark as tbench

from examples.run import environment, git_state, resolve_device, write_json

__all__ = [
    "RESULTS_DIR",
    "SCHEMA",
    "Comparison",
    "SavedTensorMeter",
    "Timing",
    "add_common_args",
    "compare_alternating",
    "format_table",
    "make_payload",
    "run_metadata",
    "saved_tensor_bytes",
    "setup_run",
    "default_output",
    "finish_run",
    "run_main",
    "time_fn",
    "validate_results",
    "write_results",
]

SCHEMA = "attnblocks.benchmarks/v1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------------
# Run metadata
# --------------------------------------------------------------------------------------------------


# the results' metadata keys, in order, and the key of examples.run.environment() each comes from
_METADATA_FROM_ENVIRONMENT = {
    "created_utc": "created_utc",
    "python": "python",
    "platform": "platform",
    "torch": "torch",
    "cuda": "cuda",
    "cudnn": "cudnn",
    "device": "device",
    "device_name": "device_name",
    "cpu_capability": "cpu_capability",
    "cpu_count": "cpu_count",
    "num_threads": "threads",
    "omp_num_threads": "omp_num_threads",
}
_CUDA_METADATA = ("device_memory_bytes", "device_capability")


def run_metadata(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Everything needed to interpret a figure later: code, software, hardware and threads.

    The record of :func:`examples.run.environment`, under the names of the results schema:
    ``commit`` and ``dirty`` apart, ``num_threads``, and ``argv`` without the program name.
    """
    env = environment(device)
    commit, dirty = git_state()
    meta: dict[str, Any] = {"commit": commit, "dirty": dirty}
    meta.update({key: env[source] for key, source in _METADATA_FROM_ENVIRONMENT.items()})
    meta["argv"] = sys.argv[1:]
    meta.update({key: env[key] for key in _CUDA_METADATA if key in env})
    meta["triton"] = env["triton"]
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
    """Validate ``payload`` and write it as JSON to ``path`` atomically (``examples.run``)."""
    validate_results(payload)
    return write_json(path, payload, indent=1)


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
