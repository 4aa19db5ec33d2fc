"""Timing of the benchmarks: per-call times of one callable, and alternating A/B comparisons.

Method (see ``benchmarks/README.md``):

- **Timing.** On CPU, :func:`time_fn` uses ``torch.utils.benchmark.Timer.blocked_autorange`` (the
  statement is repeated in blocks until ``min_run_time`` has passed; one sample per block). On CUDA it
  uses CUDA events around each call, after a synchronised warm-up. Both return a :class:`Timing`
  (median, inter-quartile range, min, max of the per-call times).
- **A/B comparison.** :func:`compare_alternating` measures several variants in the same process, in
  rounds, alternating their order every round (A B, B A, A B, ...), so that slow drifts of a shared
  machine (other jobs, thermal state) hit every variant alike. Ratios are computed *per round* (paired)
  and summarised by their median and spread.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.utils.benchmark as tbench

__all__ = ["Comparison", "Timing", "compare_alternating", "time_fn"]


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
