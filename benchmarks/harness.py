"""The frame every benchmark runs in: its flags, its run record and its results file.

- **Flags.** :func:`add_common_args` (device, threads, ``--quick``, rounds, output, seed),
  :func:`setup_run` and :func:`run_main` (parse, run, write).
- **Record.** :func:`run_metadata`: the commit, software, hardware and threads of the run.
- **Results.** :func:`write_results` writes one JSON file per run with a fixed schema
  (:data:`SCHEMA`, checked by :func:`validate_results`), atomically.

What the benchmarks measure with: :mod:`benchmarks.timing` (per-call times, alternating A/B
rounds) and :mod:`benchmarks.saved_tensors` (activation bytes). Devices (``--device``), the
autocast table, the environment record, atomic writes and the filling of profile defaults are the
run set-up the example scripts use too: :mod:`examples.run`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from examples.run import environment, git_state, resolve_device, write_json

__all__ = [
    "RESULTS_DIR",
    "SCHEMA",
    "add_common_args",
    "default_output",
    "finish_run",
    "format_table",
    "make_payload",
    "run_main",
    "run_metadata",
    "setup_run",
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
