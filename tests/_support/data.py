"""Where the repository and the real ISIC data are, and a skip that says which data is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Real ISIC subsets, next to the repository by default (``ATTNBLOCKS_SHARED_DATA`` overrides).
SHARED_DATA = Path(os.environ.get("ATTNBLOCKS_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_subset(name: str) -> Path:
    """Path of one folder of ``../shared/data``; skips the calling test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real ISIC data {name!r} not found at {path} (ATTNBLOCKS_SHARED_DATA=DIR)")
    return path
