"""Every ```python block of README.md and docs/*.md runs, in order, one namespace per file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests._support.data import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


# deploy.md's blocks export networks (torch.export, ONNX) for 15 s: tests/core/test_deploy.py
# covers those calls in the fast suite, the snippets themselves run with the slow tests
SLOW_DOCS = {"deploy.md"}


@pytest.mark.parametrize(
    "doc",
    [pytest.param(d, marks=pytest.mark.slow) if d.name in SLOW_DOCS else d
     for d in DOCS if d.exists()],
    ids=lambda p: p.name,
)  # fmt: skip
def test_doc_snippets_run(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = BLOCK.findall(doc.read_text())
    if not blocks:
        pytest.skip(f"{doc.name} has no python block")
    monkeypatch.chdir(tmp_path)  # snippets that write files write them here
    namespace: dict = {"__name__": f"doc_{doc.stem}"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{doc.name}[block {i}]", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message is the point
            raise AssertionError(f"{doc.name}, python block {i} failed: {exc!r}\n{code}") from exc
