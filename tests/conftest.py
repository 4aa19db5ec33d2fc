from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `from examples.isic import ...`, like torchvision's references
    sys.path.insert(0, str(ROOT))

SHARED_DATA = Path(os.environ.get("ATTNBLOCKS_SHARED_DATA", ROOT.parent / "shared" / "data"))


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


def shared_subset(name: str) -> Path:
    """Path of one folder of ``../shared/data``; skips the calling test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real ISIC data {name!r} not found at {path}")
    return path
