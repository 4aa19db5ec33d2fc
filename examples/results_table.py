"""Results a reader can check: experiment-group JSON files -> markdown tables and a figure.

One JSON file per experiment group (``docs/results/<group>.json``) holds, for every variant, the
command that was run and, for every seed, the run's wall time and its ``metrics.json``. Two steps:

    # 1. gather finished runs into a group file (reads OUT/metrics.json, config.json, log.csv)
    python examples/results_table.py collect docs/results/attnmel-lite0.json \\
        --title "AttnMel on ImageNet EfficientNet-Lite0, ISIC 2017" --primary melanoma.auc \\
        --variant gates 'runs/gates-s*' --variant gap 'runs/gap-s*' --compare gates gap
    # 2. write docs/results/<group>.md (tables) and <group>.png (per-seed AUCs per variant)
    python examples/results_table.py render docs/results/*.json

The group file (schema ``attnblocks-results/1``)::

    {"schema": "attnblocks-results/1", "group": "attnmel-lite0", "title": "...",
     "data": "...", "differs_from_paper": "...", "primary_metric": "melanoma.auc",
     "metrics": ["melanoma.auc", "melanoma.sensitivity_at_specificity.0.90"],
     "comparisons": [["gates", "gap"]],
     "variants": [{"name": "gates", "command": "python examples/... --seed 0",
                   "runs": [{"seed": 0, "wall_s": 3712.4, "out": "runs/gates-s0",
                             "metrics": {... the run's metrics.json ...}}]}]}

Metric names are dotted paths into ``metrics.json`` (``melanoma.auc``, ``mean_auc``,
``attention_jaccard.val.gate0``). A metric whose sibling ``<name>_ci`` holds a bootstrap interval
is shown with it. Comparisons give the difference of the means, the paired t-test over the seeds
both variants ran (``scipy.stats.ttest_rel``) and Student's two-sample t-test
(:func:`examples.compare_runs.compare`).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import glob
import json
import math
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from examples.run import atomic_path, atomic_write, write_json

__all__ = ["collect", "load_group", "main", "metric_value", "render", "render_markdown"]

SCHEMA = "attnblocks-results/1"


# --- reading ------------------------------------------------------------------------------------


def metric_value(metrics: Mapping[str, Any], name: str) -> float:
    """The number at dotted path ``name`` of a ``metrics.json`` dict (``KeyError`` if absent)."""
    node: Any = metrics
    parts = name.split(".")
    i = 0
    while i < len(parts):
        # keys may hold dots themselves ("0.90"): take the longest key that matches
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if isinstance(node, Mapping) and key in node:
                node, i = node[key], j
                break
        else:
            raise KeyError(name)
    if isinstance(node, bool) or not isinstance(node, int | float):
        raise KeyError(name)
    return float(node)


def metric_ci(metrics: Mapping[str, Any], name: str) -> tuple[float, float] | None:
    """The bootstrap interval stored next to metric ``name`` (``auc`` -> ``auc_ci``), if any."""
    head, _, leaf = name.rpartition(".")
    node: Any = metrics
    if head:
        try:
            for part in head.split("."):
                node = node[part]
        except (KeyError, TypeError):
            return None
    ci = node.get(f"{leaf}_ci") if isinstance(node, Mapping) else None
    if isinstance(ci, list) and len(ci) == 2 and all(isinstance(v, int | float) for v in ci):
        return float(ci[0]), float(ci[1])
    return None


def _require(obj: Mapping[str, Any], key: str, kind: type | tuple, where: str) -> Any:
    if key not in obj:
        raise ValueError(f"{where}: missing {key!r}")
    if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
        raise ValueError(f"{where}: {key!r} must be {getattr(kind, '__name__', kind)}")
    return obj[key]


def _has_metric(metrics: Mapping[str, Any], name: str) -> bool:
    try:
        metric_value(metrics, name)
    except KeyError:
        return False
    return True


def _variant_has(variant: Mapping[str, Any], metric: str) -> bool:
    return all(_has_metric(r["metrics"], metric) for r in variant["runs"])


def load_group(path: str | Path) -> dict[str, Any]:
    """Read and check one group file; ``ValueError`` naming the file and what is wrong."""
    path = Path(path)
    try:
        group = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read results file {path}: {err}") from err
    if not isinstance(group, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if group.get("schema") != SCHEMA:
        raise ValueError(f"{path}: 'schema' must be {SCHEMA!r}, got {group.get('schema')!r}")
    _require(group, "group", str, str(path))
    _require(group, "title", str, str(path))
    primary = _require(group, "primary_metric", str, str(path))
    variants = _require(group, "variants", list, str(path))
    if not variants:
        raise ValueError(f"{path}: 'variants' is empty")
    metrics = group.setdefault("metrics", [primary])
    if primary not in metrics:
        metrics.insert(0, primary)
    names = set()
    for k, v in enumerate(variants):
        where = f"{path}: variants[{k}]"
        name = _require(v, "name", str, where)
        if name in names:
            raise ValueError(f"{where}: variant {name!r} listed twice")
        names.add(name)
        _require(v, "command", str, where)
        runs = _require(v, "runs", list, where)
        if not runs:
            raise ValueError(f"{where} ({name}): no runs")
        seeds = [_require(r, "seed", int, f"{where}.runs") for r in runs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{where} ({name}): a seed is listed twice: {seeds}")
        for r in runs:
            _require(r, "wall_s", (int, float), f"{where} ({name}) seed {r['seed']}")
            _require(r, "metrics", dict, f"{where} ({name}) seed {r['seed']}")
        for metric in metrics:
            # a variant may lack a metric in every run (a GAP head has no gate Jaccard), never
            # in some of them; the primary metric is everywhere
            found = [_has_metric(r["metrics"], metric) for r in runs]
            if all(found) or (not any(found) and metric != primary):
                continue
            r = runs[found.index(False)]
            raise ValueError(
                f"{where} ({name}) seed {r['seed']}: metric {metric!r} not in its metrics"
            )
        for r in runs:
            last = r.get("last_epoch", {})
            if not (
                isinstance(last, dict)
                and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in last.values()
                )
            ):
                raise ValueError(f"{where} ({name}) seed {r['seed']}: last_epoch must map log "
                                 "columns to numbers")  # fmt: skip
    for pair in group.setdefault("comparisons", []):
        if not (isinstance(pair, list) and len(pair) == 2 and set(pair) <= names):
            raise ValueError(
                f"{path}: comparison {pair!r} must name two variants of {sorted(names)}"
            )
    return group


# --- tables -------------------------------------------------------------------------------------


def _mean_sd(values: Sequence[float]) -> str:
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return f"{x.mean():.4f}"
    return f"{x.mean():.4f} ± {x.std(ddof=1):.4f}"


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}:{minutes % 60:02d} h"


def _p(p: float) -> str:
    return "nan" if math.isnan(p) else f"{p:.4f}"


def comparison_rows(group: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per comparison and metric: the means' difference, paired and two-sample p-values."""
    from scipy import stats

    from examples.compare_runs import compare

    by_name = {v["name"]: v for v in group["variants"]}
    rows = []
    for a, b in group["comparisons"]:
        va, vb = by_name[a], by_name[b]
        for metric in group["metrics"]:
            if not (_variant_has(va, metric) and _variant_has(vb, metric)):
                continue
            xa = {r["seed"]: metric_value(r["metrics"], metric) for r in va["runs"]}
            xb = {r["seed"]: metric_value(r["metrics"], metric) for r in vb["runs"]}
            common = sorted(set(xa) & set(xb))
            paired = math.nan
            if len(common) >= 2:
                d = np.array([xa[s] - xb[s] for s in common])
                if np.ptp(d) > 0:
                    paired = float(
                        stats.ttest_rel([xa[s] for s in common], [xb[s] for s in common]).pvalue
                    )
            two = math.nan
            if len(xa) >= 2 and len(xb) >= 2:
                found = compare([{metric: v} for v in xa.values()],
                                [{metric: v} for v in xb.values()], [metric])  # fmt: skip
                two = found[0]["p"] if found else math.nan
            rows.append({
                "a": a, "b": b, "metric": metric, "diff": np.mean(list(xa.values()))
                - np.mean(list(xb.values())), "paired_n": len(common), "p_paired": paired,
                "p_two_sample": two,
            })  # fmt: skip
    return rows


def _last_epoch_table(group: Mapping[str, Any]) -> list[str]:
    """Mean ± sd over seeds of the ``last_epoch`` log columns, one row per column and variant."""
    with_cols = [v for v in group["variants"] if any("last_epoch" in r for r in v["runs"])]
    if not with_cols:
        return []
    columns = sorted({k for v in with_cols for r in v["runs"] for k in r.get("last_epoch", {})})
    head = ["log column (last epoch)", *(v["name"] for v in with_cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for col in columns:
        cells = [f"`{col}`"]
        for v in with_cols:
            values = [r["last_epoch"][col] for r in v["runs"] if col in r.get("last_epoch", {})]
            cells.append(_mean_sd(values) if values else "")
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, "", "Mean ± sample standard deviation over seeds, after the last epoch.", ""]


def render_markdown(group: Mapping[str, Any], figure: str | None = None) -> str:
    """The markdown of one group: summary, per-seed, comparison tables, commands, figure."""
    metrics = group["metrics"]
    lines = [f"### {group['title']}", ""]
    for key, label in (("data", "Data"), ("differs_from_paper", "What differs from the papers")):
        if group.get(key):
            lines += [f"**{label}.** {group[key]}", ""]
    head = ["variant", "seeds", *metrics, "wall time per run"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in group["variants"]:
        runs = v["runs"]
        cells = [v["name"], str(len(runs))]
        cells += [_mean_sd([metric_value(r["metrics"], m) for r in runs])
                  if _variant_has(v, m) else "–" for m in metrics]  # fmt: skip
        cells.append(_duration(float(np.mean([r["wall_s"] for r in runs]))))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± sample standard deviation over seeds.", ""]
    head = ["variant", "seed", *metrics, "wall time"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in group["variants"]:
        for r in sorted(v["runs"], key=lambda r: r["seed"]):
            cells = [v["name"], str(r["seed"])]
            for m in metrics:
                if not _has_metric(r["metrics"], m):
                    cells.append("–")
                    continue
                value = metric_value(r["metrics"], m)
                ci = metric_ci(r["metrics"], m)
                cells.append(f"{value:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
            cells.append(_duration(r["wall_s"]))
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Brackets: 95 % bootstrap confidence interval on the test set (`auc_ci`).", ""]
    rows = comparison_rows(group)
    if rows:
        head = ["comparison", "metric", "difference of means", "p (paired by seed)",
                "p (two-sample)"]  # fmt: skip
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            lines.append(
                f"| {r['a']} - {r['b']} | {r['metric']} | {r['diff']:+.4f} | "
                f"{_p(r['p_paired'])} (n={r['paired_n']}) | {_p(r['p_two_sample'])} |"
            )
        lines += ["", "Two-sided t-tests: paired over the seeds both variants ran, and Student's "
                  "two-sample test (pooled variance).", ""]  # fmt: skip
    lines += _last_epoch_table(group)
    total = sum(r["wall_s"] for v in group["variants"] for r in v["runs"])
    lines += [f"Compute: {sum(len(v['runs']) for v in group['variants'])} runs, "
              f"{_duration(total)} in all.", "", "Commands (one per variant; `--seed` varies):",
              "", "```bash"]  # fmt: skip
    lines += [v["command"] for v in group["variants"]]
    lines += ["```", ""]
    if figure:
        lines += [f"![per-seed {group['primary_metric']} per variant]({figure})", ""]
    return "\n".join(lines)


def render_figure(group: Mapping[str, Any], path: str | Path) -> Path:
    """Per-seed values of the primary metric per variant (dots, with their bootstrap intervals
    as error bars), and each variant's mean (a bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = group["primary_metric"]
    variants = group["variants"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(variants), 3.6))
    for k, v in enumerate(variants):
        runs = sorted(v["runs"], key=lambda r: r["seed"])
        values = [metric_value(r["metrics"], primary) for r in runs]
        offsets = np.linspace(-0.15, 0.15, len(runs)) if len(runs) > 1 else [0.0]
        for x, r, y in zip(offsets, runs, values, strict=True):
            ci = metric_ci(r["metrics"], primary)
            err = None if ci is None else [[y - ci[0]], [ci[1] - y]]
            ax.errorbar(k + x, y, yerr=err, fmt="o", color=f"C{k}", capsize=2, ms=4)
        ax.hlines(np.mean(values), k - 0.3, k + 0.3, color=f"C{k}", lw=2)
    ax.set_xticks(range(len(variants)), [v["name"] for v in variants])
    ax.set_ylabel(primary)
    ax.set_title(group["title"], fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return path


def render(paths: Sequence[str | Path], out_dir: str | Path | None = None) -> list[Path]:
    """Write ``<group>.md`` and ``<group>.png`` for every group file (next to it by default)."""
    written = []
    for p in paths:
        group = load_group(p)
        folder = Path(out_dir) if out_dir is not None else Path(p).parent
        figure = render_figure(group, folder / f"{group['group']}.png")
        text = render_markdown(group, figure.name)
        md = folder / f"{group['group']}.md"
        atomic_write(md, lambda fh, text=text: fh.write(text.encode()))
        written += [md, figure]
    return written


# --- collecting runs ----------------------------------------------------------------------------


def _run_record(run: Path, log_columns: Sequence[str] = ()) -> dict[str, Any]:
    metrics_path, config_path, log_path = (
        run / n for n in ("metrics.json", "config.json", "log.csv")
    )
    for f in (metrics_path, config_path, log_path):
        if not f.is_file():
            raise ValueError(f"{run} is not a finished run: no {f.name}")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    config = json.loads(config_path.read_text(encoding="utf-8"))
    with open(log_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    wall = sum(float(r.get("epoch_s") or 0) for r in rows)
    # a resumed run records --resume; the experiment is the command without it
    argv = [a for a in config.get("environment", {}).get("argv") or [] if a != "--resume"]
    record = {
        "seed": int(config["settings"]["seed"]),
        "wall_s": round(wall, 1),
        "out": str(run),
        "command": "python " + " ".join(shlex.quote(a) for a in argv) if argv else "",
        "metrics": metrics,
    }
    if log_columns:
        last = rows[-1] if rows else {}
        picked = {k: float(v) for k, v in last.items()
                  if v not in (None, "") and any(fnmatch.fnmatchcase(k, c) for c in log_columns)}  # fmt: skip
        if picked:
            record["last_epoch"] = picked
    return record


def collect(
    path: str | Path,
    variants: Sequence[tuple[str, str]],
    title: str,
    primary: str,
    metrics: Sequence[str] | None = None,
    comparisons: Sequence[tuple[str, str]] = (),
    data: str = "",
    differs: str = "",
    log_columns: Sequence[str] = (),
) -> dict[str, Any]:
    """Build a group file from finished run folders: ``variants`` is ``[(name, glob), ...]``.

    ``log_columns`` (shell patterns such as ``alpha/*``) keeps those columns of each run's last
    ``log.csv`` row as ``runs[].last_epoch`` (the learned ARL scale gates, for example); a variant
    whose runs have none of them (a plain baseline) keeps nothing.

    The wall time of a run is the sum of its epochs' ``epoch_s`` (``log.csv``); the command is the
    first run's ``argv`` (``config.json``).
    """
    out_variants = []
    for name, pattern in variants:
        runs = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_dir())
        if not runs:
            raise ValueError(f"--variant {name}: no run folder matches {pattern!r}")
        records = [_run_record(r, log_columns) for r in runs]
        command = records[0].pop("command")
        for r in records[1:]:
            r.pop("command")
        out_variants.append({"name": name, "command": command, "runs": records})
    if log_columns and not any("last_epoch" in r for v in out_variants for r in v["runs"]):
        raise ValueError(f"no run's log.csv has a column matching --log-columns "
                         f"{' '.join(log_columns)}")  # fmt: skip
    group = {
        "schema": SCHEMA,
        "group": Path(path).stem,
        "title": title,
        "data": data,
        "differs_from_paper": differs,
        "primary_metric": primary,
        "metrics": list(metrics or [primary]),
        "comparisons": [list(c) for c in comparisons],
        "variants": out_variants,
    }
    write_json(Path(path), group)
    load_group(path)  # the file it wrote must read back
    return group


def main(argv: Sequence[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="finished run folders -> a group JSON file")
    c.add_argument("path", type=Path, help="the group file to write (docs/results/<group>.json)")
    c.add_argument("--title", required=True)
    c.add_argument("--primary", default="mean_auc", help="the figure's metric (dotted path)")
    c.add_argument("--metrics", nargs="+", default=None, help="the tables' metrics")
    c.add_argument("--variant", nargs=2, action="append", required=True, metavar=("NAME", "GLOB"))
    c.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"))
    c.add_argument("--data", default="", help="the data, in words")
    c.add_argument("--differs", default="", help="what differs from the papers' setting")
    c.add_argument(
        "--log-columns",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="log.csv columns to keep from each run's last epoch (e.g. 'alpha/*')",
    )
    r = sub.add_parser("render", help="group JSON files -> <group>.md and <group>.png")
    r.add_argument("paths", nargs="+", type=Path)
    r.add_argument("--out-dir", type=Path, default=None, help="default: next to each file")
    args = p.parse_args(argv)
    if args.command == "collect":
        collect(args.path, args.variant, args.title, args.primary, args.metrics, args.compare,
                args.data, args.differs, args.log_columns)  # fmt: skip
        print(f"wrote {args.path}")
        return [args.path]
    written = render(args.paths, args.out_dir)
    for w in written:
        print(f"wrote {w}")
    return written


if __name__ == "__main__":
    try:
        main()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
