"""The headline CUDA figures of one ``benchmarks/gpu.sh`` run, read back from its JSON results and set
against the targets (H100/H200): merge kernel >= 80 % of peak HBM bandwidth; ARL-ResNet-50 /
ResNet-50 train step <= 1.05 and inference <= 1.03; peak memory <= 1.05.

    python -m benchmarks.gpu_report --device cuda --results benchmarks/results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .harness import format_table

TARGETS = {"merge_of_peak": 0.80, "train": 1.05, "infer": 1.03, "peak_memory": 1.05}


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    return "meets target" if ok else "misses target"


def report(results: Path, device: str) -> list[dict[str, Any]]:
    """One row per headline figure found under ``results`` (files of ``gpu.sh`` on ``device``)."""
    rows: list[dict[str, Any]] = []
    blocks = _load(results / f"blocks-{device}-bf16.json")
    for r in blocks["results"] if blocks else []:
        p, m = r["params"], r["metrics"]
        layout = "channels_last" if p["channels_last"] else "NCHW"
        if p["mode"] == "fwd":
            share = m.get("merge_arl_share_of_peak")
            rows.append({
                "figure": f"merge fwd {p['stage']} b{p['batch_size']} {layout}",
                "value": f"{m['merge_arl_bytes_per_s'] / 1e9:.0f} GB/s"
                + (f" = {share:.0%} of peak" if share else ""),
                "target": f">= {TARGETS['merge_of_peak']:.0%} of peak",
                "verdict": _verdict(share, TARGETS["merge_of_peak"], True),
            })  # fmt: skip
        else:
            rows.append({
                "figure": f"block fwd+bwd {p['stage']} b{p['batch_size']} {layout}",
                "value": f"{m['ratio_median']:.3f}",
                "target": "(ARL / plain)",
                "verdict": "",
            })  # fmt: skip
    for path in sorted(results.glob(f"models-{device}-bf16-*.json")):
        doc = _load(path)
        for r in doc["results"] if doc else []:
            p, m = r["params"], r["metrics"]
            if p["model"] == p["plain"]:
                continue
            how = "compile" if p.get("compile") else "eager"
            target = TARGETS["train" if p["mode"] == "train" else "infer"]
            is_arl = p["pair"] == "resnet50"
            rows.append({
                "figure": f"{p['model']} / {p['plain']} {p['mode']} b{p['batch_size']} {how}",
                "value": f"{m['ratio_median']:.3f} ({m['ratio_min']:.3f}-{m['ratio_max']:.3f})",
                "target": f"<= {target}" if is_arl else "",
                "verdict": _verdict(m["ratio_median"], target, False) if is_arl else "",
            })  # fmt: skip
    memory = _load(results / f"memory-{device}-bf16.json")
    for r in memory["results"] if memory else []:
        p, m = r["params"], r["metrics"]
        ratio = m.get("peak_ratio")
        rows.append({
            "figure": f"peak memory {p['model']} [{p['merge_backend'] or '-'}] b{p['batch_size']}",
            "value": "n/a" if ratio is None else f"{ratio:.3f} (saved {m['saved_ratio']:.3f})",
            "target": f"<= {TARGETS['peak_memory']}" if p["merge_backend"] != "reference" else "",
            "verdict": _verdict(ratio, TARGETS["peak_memory"], False)
            if p["merge_backend"] != "reference" else "",
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    rows = report(args.results, args.device)
    print(format_table(rows, ["figure", "value", "target", "verdict"]) if rows else "no results")
    return rows


if __name__ == "__main__":
    main()
