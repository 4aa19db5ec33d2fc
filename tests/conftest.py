"""Fixtures of every room. Shared helpers (data paths, score checks, weight layouts, a tiny trainer)
are plain modules in ``tests/_support``."""

from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread, in this process and the ones it starts, unless ``OMP_NUM_THREADS`` says
    otherwise: the tests' tensors are small, and on two shared cores a second OpenMP thread mostly
    spins (without this the suite takes about twice the CPU time, and longer)."""
    if not os.environ.get("OMP_NUM_THREADS"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One intra-op thread (small tensors: more threads only add wake-up latency)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A selection that holds no test (``-m slow`` on a file without slow tests) passes: pytest's
    "no tests ran" line says so, and scripts looping over rooms or markers do not stop on it."""
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK
