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


def shared_subset(name: str) -> Path:
    """Path of one folder of ``../shared/data``; skips the calling test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real ISIC data {name!r} not found at {path}")
    return path
