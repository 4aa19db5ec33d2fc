"""The merge op's Triton (CUDA) kernels, run on the CPU by Triton's interpreter, against the merge
computed in float64 from the same inputs: values and gradients for every normalization, dtype,
layout and norm mode, odd and large planes, batch 1, |F| up to 1e4, and alpha = 0 exactly
(the cases: ``merge_triton_cases.py``).

Triton's interpreter must be chosen before Triton is first used in a process, and other tests
(torch.compile) use it first; so the cases run in a fresh interpreter of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._support.data import ROOT

pytest.importorskip("triton", reason="Triton is not installed")


def test_triton_kernels_match_float64_under_the_interpreter(request):
    cases = Path(__file__).with_name("merge_triton_cases.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    # the cases marked slow (large planes) run when this run selects slow tests too
    markexpr = request.config.getoption("markexpr") or "slow or not slow"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", markexpr, str(cases)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary
