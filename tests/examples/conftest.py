"""Fixtures of the example scripts' tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def unrendered_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Figures are built but not rendered: ``savefig`` writes an empty file where the PNG would go.

    Rendering is most of the time of a tiny run; tests that check logs, checkpoints or metrics
    (not the plots, which other tests check) use this to run the scripts cheaply.
    """
    import matplotlib.figure

    def savefig(self, fname, *args, **kwargs) -> None:
        if isinstance(fname, str | Path):
            Path(fname).write_bytes(b"")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
