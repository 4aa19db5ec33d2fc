"""The data folder a run reads (``--data-root``): the official layout it must have, splits that
are not empty, and the images ``--skip-bad`` left out.

- :func:`check_layout`: one ``ValueError`` listing what a ``--data-root`` lacks.
- :func:`check_not_empty`: every split holds an image.
- :func:`write_skipped`: the unreadable images ``--skip-bad`` left out, in ``OUT/skipped.csv``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from examples.run import atomic_write

__all__ = ["ISIC2017_LAYOUT", "check_layout", "check_not_empty", "write_skipped"]


ISIC2017_LAYOUT = (
    "ISIC-2017_Training_Data/",
    "ISIC-2017_Training_Part3_GroundTruth.csv",
    "ISIC-2017_Validation_Data/",
    "ISIC-2017_Validation_Part3_GroundTruth.csv",
    "ISIC-2017_Test_v2_Data/",
    "ISIC-2017_Test_v2_Part3_GroundTruth.csv",
)


def check_layout(root: Path, expected: Sequence[str], name: str) -> Path:
    """Raise one ``ValueError`` listing what ``root`` lacks of ``expected`` and what it holds.

    Entries ending in ``/`` must be folders, the others files.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"--data-root {root} is not a folder; expected the official {name} layout")
    missing = [
        e
        for e in expected
        if not ((root / e.rstrip("/")).is_dir() if e.endswith("/") else (root / e).is_file())
    ]
    if missing:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
        shown = ", ".join(found[:12]) + (f", ... ({len(found)} entries)" if len(found) > 12 else "")
        raise ValueError(
            f"--data-root {root} is not an official {name} layout: expected {', '.join(expected)}; "
            f"missing {', '.join(missing)}; found: {shown or 'an empty folder'}"
        )
    return root


def _base_dataset(dataset: Any) -> Any:
    """The ISIC dataset under the wrappers of the scripts (limits, subsets, boxes)."""
    for _ in range(8):
        if hasattr(dataset, "bad_files"):
            return dataset
        inner = getattr(dataset, "dataset", None)
        dataset = inner if inner is not None else getattr(dataset, "base", None)
    return dataset


def write_skipped(out: Path, splits: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """List the images the datasets of ``splits`` left out (``--skip-bad``) in ``OUT/skipped.csv``
    (columns split, image_id, file, reason) and print them; returns the rows."""
    rows = []
    for name, dataset in splits.items():
        base = _base_dataset(dataset)
        rows += [(name, *bad) for bad in getattr(base, "bad_files", [])]
    path = Path(out) / "skipped.csv"
    if not rows:
        path.unlink(missing_ok=True)
        return rows
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["split", "image_id", "file", "reason"])
    writer.writerows(rows)
    atomic_write(path, lambda fh: fh.write(buf.getvalue().encode()))
    print(f"--skip-bad: left out {len(rows)} images that cannot be read (listed in {path}):")
    for split, image_id, _, reason in rows[:10]:
        print(f"  {split} {image_id}: {reason}")
    if len(rows) > 10:
        print(f"  ... and {len(rows) - 10} more")
    return rows


def check_not_empty(splits: Mapping[str, Any], root: Path) -> None:
    """Raise ``ValueError`` naming the first split of ``splits`` that holds no image."""
    for name, dataset in splits.items():
        if len(dataset) == 0:
            summary = dataset.summary() if hasattr(dataset, "summary") else type(dataset).__name__
            raise ValueError(
                f"the {name!r} split of {root} is empty ({summary}); check the data folder, "
                "--limit and the split fractions"
            )
