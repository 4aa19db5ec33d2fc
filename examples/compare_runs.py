"""Compare repeated runs of two methods: mean and spread per metric, and the two-sample t-test of the
ARL paper (Sec. V-G: ARL-CNN50 vs ResNet-50 over repeated runs).

    python examples/compare_runs.py --a runs/arl-*/metrics.json --b runs/resnet-*/metrics.json \\
        --names ARL-CNN14 ResNet-14

Each file is an ``OUT/metrics.json`` of the example scripts. Every numeric leaf present in all
files is compared (``mean_auc``, ``melanoma.auc``, ...; ``--metrics`` picks some). The test is
Student's two-sample t-test with pooled variance (``--welch`` for unequal variances), two-sided.
The sensitivities at fixed specificities (``melanoma.sensitivity_at_specificity.0.90``, ...) are
compared like any other number; every run's AUCs with their bootstrap 95 % intervals (``auc_ci`` in
``metrics.json``) are listed after the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from examples.run import write_json

__all__ = [
    "auc_intervals",
    "compare",
    "format_comparison",
    "format_intervals",
    "load_runs",
    "main",
]


def _leaves(obj: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_leaves(v, f"{key}."))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def _intervals(obj: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[float, float, float]]:
    out: dict[str, tuple[float, float, float]] = {}
    for k, v in obj.items():
        if isinstance(v, Mapping):
            out.update(_intervals(v, f"{prefix}{k}."))
        elif k.endswith("_ci") and isinstance(v, list) and len(v) == 2:
            point = obj.get(k[: -len("_ci")])
            if isinstance(point, int | float) and not isinstance(point, bool):
                out[f"{prefix}{k[: -len('_ci')]}"] = (float(point), float(v[0]), float(v[1]))
    return out


def auc_intervals(paths: Sequence[str | Path]) -> list[dict[str, tuple[float, float, float]]]:
    """Per file: ``{"melanoma.auc": (auc, lo, hi), "mean_auc": (...), ...}``, every AUC of a
    ``metrics.json`` that carries a bootstrap interval (``auc_ci`` next to ``auc``)."""
    return [_intervals(data) for data in _read(paths)]


def format_intervals(
    groups: Sequence[tuple[str, Sequence[str | Path]]], metrics: Sequence[str] | None = None
) -> str:
    """A text table: every run's AUCs with their 95 % bootstrap intervals (``lo-hi``)."""
    rows = []
    for name, paths in groups:
        for path, found in zip(paths, auc_intervals(paths), strict=True):
            for key, (point, lo, hi) in sorted(found.items()):
                if metrics and key not in metrics:
                    continue
                rows.append(f"{name:<12} {key:<30} {point:7.4f} [{lo:.4f}, {hi:.4f}]  {path}")
    if not rows:
        return ""
    head = f"{'method':<12} {'AUC':<30} {'value':>7} {'95% CI':<18}  file"
    return "\n".join([head, "-" * len(head), *rows])


def _read(paths: Sequence[str | Path]) -> list[Mapping[str, Any]]:
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ValueError(f"no metrics file at {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path} is not a text (UTF-8) metrics file: {exc.reason}") from exc
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if not isinstance(data, Mapping):
            raise ValueError(
                f"{path}: expected a JSON object of metrics, got {type(data).__name__}"
            )
        out.append(data)
    return out


def load_runs(paths: Sequence[str | Path]) -> list[dict[str, float]]:
    """Read metrics JSON files into flat ``{"melanoma.auc": value, ...}`` dicts."""
    return [_leaves(data) for data in _read(paths)]


def compare(
    a: Sequence[Mapping[str, float]],
    b: Sequence[Mapping[str, float]],
    metrics: Sequence[str] | None = None,
    welch: bool = False,
) -> list[dict[str, Any]]:
    """Per metric: n, mean and sample std of each group, the difference, t and the p-value.

    Needs at least two runs per group. ``metrics`` defaults to every key present in all runs.
    """
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 runs per method for a t-test, got {len(a)} and {len(b)}")
    common = set.intersection(*(set(r) for r in (*a, *b)))
    keys = list(metrics) if metrics else sorted(common)
    missing = [k for k in keys if k not in common]
    if missing:
        raise ValueError(f"metrics {missing} are not in every run; available: {sorted(common)}")
    rows = []
    for k in keys:
        xa = np.array([r[k] for r in a], dtype=np.float64)
        xb = np.array([r[k] for r in b], dtype=np.float64)
        if np.isnan(xa).any() or np.isnan(xb).any():
            continue
        if np.ptp(xa) == 0 and np.ptp(xb) == 0:  # no spread: the t statistic is undefined or inf
            same = xa[0] == xb[0]
            t, p = (math.nan, math.nan) if same else (math.copysign(math.inf, xa[0] - xb[0]), 0.0)
        else:
            with warnings.catch_warnings():  # scipy warns when one group has no spread
                warnings.simplefilter("ignore", RuntimeWarning)
                t, p = stats.ttest_ind(xa, xb, equal_var=not welch)
        rows.append({
            "metric": k, "n_a": len(xa), "mean_a": xa.mean(), "std_a": xa.std(ddof=1),
            "n_b": len(xb), "mean_b": xb.mean(), "std_b": xb.std(ddof=1),
            "diff": xa.mean() - xb.mean(), "t": float(t), "p": float(p),
        })  # fmt: skip
    return rows


def format_comparison(rows: Sequence[Mapping[str, Any]], names: Sequence[str] = ("A", "B")) -> str:
    """A text table: metric, mean +- std of each method, difference, t and p."""
    a, b = names
    head = f"{'metric':<34} {a:>17} {b:>17} {'diff':>8} {'t':>7} {'p':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        t = "nan" if math.isnan(r["t"]) else f"{r['t']:7.3f}"
        p = "nan" if math.isnan(r["p"]) else f"{r['p']:8.4f}"
        lines.append(
            f"{r['metric']:<34} {r['mean_a']:8.4f} +- {r['std_a']:.4f} "
            f"{r['mean_b']:8.4f} +- {r['std_b']:.4f} {r['diff']:+8.4f} {t:>7} {p:>8}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", nargs="+", required=True, help="metrics.json files of method A")
    p.add_argument("--b", nargs="+", required=True, help="metrics.json files of method B")
    p.add_argument("--names", nargs=2, default=("A", "B"), help="the two methods' names")
    p.add_argument("--metrics", nargs="+", default=None, help="e.g. mean_auc melanoma.auc")
    p.add_argument("--welch", action="store_true", help="Welch's t-test (unequal variances)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    rows = compare(load_runs(args.a), load_runs(args.b), args.metrics, args.welch)
    test = "Welch" if args.welch else "Student (pooled variance)"
    print(f"{args.names[0]}: {len(args.a)} runs, {args.names[1]}: {len(args.b)} runs; "
          f"two-sided {test} two-sample t-test")  # fmt: skip
    print(format_comparison(rows, args.names))
    intervals = format_intervals([(args.names[0], args.a), (args.names[1], args.b)], args.metrics)
    if intervals:
        print("\nper run: AUC and its 95% bootstrap confidence interval")
        print(intervals)
    if args.json is not None:
        write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    try:
        main()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
