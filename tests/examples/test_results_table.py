"""examples/results_table.py: experiment-group JSON -> markdown tables and a per-seed figure."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
from scipy import stats

from examples import results_table as rt


def _metrics(mel: float, sk: float) -> dict:
    return {
        "melanoma": {"auc": mel, "auc_ci": [mel - 0.05, mel + 0.04],
                     "sensitivity_at_specificity": {"0.80": mel - 0.2, "0.90": mel - 0.3}},
        "seborrheic_keratosis": {"auc": sk},
        "mean_auc": (mel + sk) / 2,
    }  # fmt: skip


GATES = (0.80, 0.82, 0.84)
GAP = (0.70, 0.71, 0.75)


def _group() -> dict:
    return {
        "schema": "attnblocks-results/1",
        "group": "toy",
        "title": "Toy group",
        "data": "hand-made numbers",
        "differs_from_paper": "nothing is real here",
        "primary_metric": "melanoma.auc",
        "metrics": ["melanoma.auc", "melanoma.sensitivity_at_specificity.0.90"],
        "comparisons": [["gates", "gap"]],
        "variants": [
            {"name": "gates", "command": "python examples/isic2017_attnmel.py --seed 0",
             "runs": [{"seed": s, "wall_s": 3600.0, "metrics": _metrics(m, 0.9)}
                      for s, m in enumerate(GATES)]},
            {"name": "gap", "command": "python examples/isic2017_attnmel.py --head gap --seed 0",
             "runs": [{"seed": s, "wall_s": 1800.0 + 600 * s, "metrics": _metrics(m, 0.85)}
                      for s, m in enumerate(GAP)]},
        ],
    }  # fmt: skip


def test_metric_paths_and_intervals() -> None:
    m = _metrics(0.8, 0.9)
    assert rt.metric_value(m, "melanoma.sensitivity_at_specificity.0.90") == pytest.approx(0.5)
    assert rt.metric_value(m, "mean_auc") == pytest.approx(0.85)
    assert rt.metric_ci(m, "melanoma.auc") == pytest.approx((0.75, 0.84))
    assert rt.metric_ci(m, "seborrheic_keratosis.auc") is None
    with pytest.raises(KeyError):
        rt.metric_value(m, "melanoma.sensitivity_at_specificity")  # a dict, not a number


def test_render_tables_and_figure(tmp_path: Path) -> None:
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(_group()))
    md, png = rt.main(["render", str(path)])
    assert (md.name, png.name) == ("toy.md", "toy.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    text = md.read_text()
    # summary: mean ± sample sd over the seeds, mean wall time per run
    assert "| gates | 3 | 0.8200 ± 0.0200 | 0.5200 ± 0.0200 | 1:00 h |" in text
    assert "| gap | 3 | 0.7200 ± 0.0265 | 0.4200 ± 0.0265 | 0:40 h |" in text
    # per seed, with the bootstrap interval where metrics.json has one
    assert "| gates | 1 | 0.8200 [0.770, 0.860] | 0.5200 | 1:00 h |" in text
    # comparisons: the paired t-test over seeds and Student's two-sample test
    paired = stats.ttest_rel(GATES, GAP).pvalue
    two = stats.ttest_ind(GATES, GAP).pvalue
    assert f"| gates - gap | melanoma.auc | +0.1000 | {paired:.4f} (n=3) | {two:.4f} |" in text
    assert "Compute: 6 runs, 5:00 h in all." in text
    assert "python examples/isic2017_attnmel.py --head gap --seed 0" in text
    assert (
        "nothing is real here" in text and "![per-seed melanoma.auc per variant](toy.png)" in text
    )


def test_bad_group_files(tmp_path: Path) -> None:
    def write(group: dict) -> Path:
        p = tmp_path / "g.json"
        p.write_text(json.dumps(group))
        return p

    bad = copy.deepcopy(_group())
    bad["variants"][1]["runs"][2]["metrics"]["melanoma"].pop("auc")
    with pytest.raises(ValueError, match=r"\(gap\) seed 2: metric 'melanoma.auc' not in"):
        rt.load_group(write(bad))
    bad = copy.deepcopy(_group())
    bad["variants"][0]["runs"][1]["seed"] = 0
    with pytest.raises(ValueError, match=r"a seed is listed twice: \[0, 0, 2\]"):
        rt.load_group(write(bad))
    bad = copy.deepcopy(_group())
    bad["comparisons"] = [["gates", "vgg"]]
    with pytest.raises(ValueError, match="comparison"):
        rt.load_group(write(bad))
    with pytest.raises(ValueError, match="'schema' must be"):
        rt.load_group(write({"group": "x"}))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read results file"):
        rt.load_group(tmp_path / "broken.json")


def test_collect_from_run_folders(tmp_path: Path) -> None:
    for name, values in (("gates", GATES), ("gap", GAP)):
        for seed, mel in enumerate(values):
            run = tmp_path / "runs" / f"{name}-s{seed}"
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps(_metrics(mel, 0.9)))
            argv = ["examples/isic2017_attnmel.py", "--seed", str(seed), "--out", str(run)]
            argv += ["--resume"] if seed == 0 else []  # resumed after a stop: the same experiment
            config = {"settings": {"seed": seed}, "environment": {"argv": argv}}
            (run / "config.json").write_text(json.dumps(config))
            with open(run / "log.csv", "w", newline="") as fh:
                w = csv.DictWriter(fh, ["epoch", "epoch_s"])
                w.writeheader()
                w.writerows([{"epoch": 0, "epoch_s": 100.25}, {"epoch": 1, "epoch_s": 50.0}])
    out = tmp_path / "results" / "lite0.json"
    rt.main(["collect", str(out), "--title", "T", "--primary", "melanoma.auc",
             "--variant", "gates", str(tmp_path / "runs" / "gates-s*"),
             "--variant", "gap", str(tmp_path / "runs" / "gap-s*"),
             "--compare", "gates", "gap"])  # fmt: skip
    group = rt.load_group(out)
    assert group["group"] == "lite0" and group["comparisons"] == [["gates", "gap"]]
    gates = group["variants"][0]
    assert [r["seed"] for r in gates["runs"]] == [0, 1, 2]
    assert gates["runs"][1]["wall_s"] == pytest.approx(150.2, abs=0.06)
    assert gates["runs"][2]["metrics"]["melanoma"]["auc"] == 0.84
    assert gates["command"].startswith("python examples/isic2017_attnmel.py --seed 0")
    assert "--resume" not in gates["command"]
    with pytest.raises(ValueError, match="no run folder matches"):
        rt.main(["collect", str(out), "--title", "T", "--variant", "x", str(tmp_path / "none*")])


def test_collect_keeps_last_epoch_log_columns(tmp_path: Path) -> None:
    """``--log-columns 'alpha/*'`` keeps the ARL scale gates of each run's last epoch; the plain
    baseline (no such column) keeps none, and the rendered table averages them over seeds."""
    alphas = {0: (0.001, -0.5), 1: (0.003, -0.7)}
    for name in ("arl", "plain"):
        for seed, (a1, a2) in alphas.items():
            run = tmp_path / f"{name}-s{seed}"
            run.mkdir()
            (run / "metrics.json").write_text(json.dumps(_metrics(0.8 + seed / 100, 0.9)))
            config = {"settings": {"seed": seed}, "environment": {"argv": ["x.py"]}}
            (run / "config.json").write_text(json.dumps(config))
            cols = ["epoch", "epoch_s"] + (
                ["alpha/layer1.0", "alpha/layer4.0"] if name == "arl" else []
            )
            with open(run / "log.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(cols)
                w.writerow([0, 10.0, 0.001, 0.001][: len(cols)])
                w.writerow([1, 10.0, a1, a2][: len(cols)])
    out = tmp_path / "arl.json"
    base = ["collect", str(out), "--title", "T", "--variant", "arl", str(tmp_path / "arl-s*"),
            "--variant", "plain", str(tmp_path / "plain-s*")]  # fmt: skip
    rt.main([*base, "--log-columns", "alpha/*"])
    group = rt.load_group(out)
    arl, plain = group["variants"]
    assert [r["last_epoch"] for r in arl["runs"]] == [
        {"alpha/layer1.0": 0.001, "alpha/layer4.0": -0.5},
        {"alpha/layer1.0": 0.003, "alpha/layer4.0": -0.7},
    ]
    assert all("last_epoch" not in r for r in plain["runs"])
    text = rt.render_markdown(group)
    assert "| `alpha/layer4.0` | -0.6000 ± 0.1414 |" in text
    assert "| log column (last epoch) | arl |" in text
    with pytest.raises(ValueError, match="no run's log.csv has a column matching"):
        rt.main([*base, "--log-columns", "beta/*"])
    group["variants"][0]["runs"][0]["last_epoch"] = {"alpha/layer1.0": "big"}
    out.write_text(json.dumps(group))
    with pytest.raises(ValueError, match="last_epoch must map log columns to numbers"):
        rt.load_group(out)


def test_a_metric_one_variant_does_not_measure(tmp_path: Path) -> None:
    """Gate Jaccard exists for the gated variant only: the GAP head shows "–" and no comparison
    is made on it; a metric missing from one run of a variant (not all) stays an error."""
    group = copy.deepcopy(_group())
    group["metrics"].append("attention_jaccard.val.gate1")
    for k, r in enumerate(group["variants"][0]["runs"]):
        r["metrics"]["attention_jaccard"] = {"val": {"gate1": 0.1 * (k + 1), "images": 150}}
    path = tmp_path / "g.json"
    path.write_text(json.dumps(group))
    loaded = rt.load_group(path)
    text = rt.render_markdown(loaded)
    assert "| gates | 3 | 0.8200 ± 0.0200 | 0.5200 ± 0.0200 | 0.2000 ± 0.1000 |" in text
    assert "| gap | 3 | 0.7200 ± 0.0265 | 0.4200 ± 0.0265 | – |" in text
    assert "| gap | 0 | 0.7000 [0.650, 0.740] | 0.4000 | – |" in text
    assert [r["metric"] for r in rt.comparison_rows(loaded)] == group["metrics"][:2]
    group["variants"][0]["runs"][1]["metrics"].pop("attention_jaccard")
    path.write_text(json.dumps(group))
    with pytest.raises(ValueError, match=r"\(gates\) seed 1: metric 'attention_jaccard.val.gate1'"):
        rt.load_group(path)
    group = copy.deepcopy(_group())
    for r in group["variants"][1]["runs"]:
        r["metrics"]["melanoma"].pop("auc")  # the primary metric: never optional
    path.write_text(json.dumps(group))
    with pytest.raises(ValueError, match=r"\(gap\) seed 0: metric 'melanoma.auc' not in"):
        rt.load_group(path)


SHIPPED = sorted((Path(__file__).parents[2] / "docs" / "results").glob("*.json"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_tables_are_generated_from_their_group_files(path: Path) -> None:
    """docs/results/<group>.md is what `render` makes of <group>.json, and the summary table that
    docs/results.md quotes is that file's, unedited."""
    group = rt.load_group(path)
    text = rt.render_markdown(group, f"{group['group']}.png")
    assert path.with_suffix(".md").read_text() == text
    summary = text.split("\n\n")[1 + sum(1 for k in ("data", "differs_from_paper") if group.get(k))]
    assert summary.startswith("| variant | seeds |")
    assert summary in (path.parents[1] / "results.md").read_text()
