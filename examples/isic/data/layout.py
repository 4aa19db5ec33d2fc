"""Reading the official ISIC layouts: ground-truth CSVs and the image file of each id."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "ISIC2017_PREFIX",
    "ISIC2018_CLASSES",
    "binary_columns",
    "find_image",
    "optional_file",
    "read_label_csv",
    "unique_rows",
]

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
#: file-name prefix of each ISIC 2017 split (``<prefix>_Data/``, ``<prefix>_Part3_GroundTruth.csv``)
ISIC2017_PREFIX = {
    "train": "ISIC-2017_Training",
    "val": "ISIC-2017_Validation",
    "test": "ISIC-2017_Test_v2",
}
#: the ISIC 2018 task 3 classes, in the order of the ground-truth CSV's columns
ISIC2018_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


def read_label_csv(
    path: str | os.PathLike, columns: Sequence[str], header: bool = True
) -> tuple[list[str], np.ndarray]:
    """Read an ISIC ground-truth CSV: ids and a float ``(N, len(columns)-1)`` value array.

    ``columns`` is the expected header, id column first. With ``header=False`` the file has no
    header row and its columns are taken in that order. Raises ``FileNotFoundError`` /
    ``ValueError`` naming the file and the expected columns.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ground-truth CSV not found: {path} (expected columns: {', '.join(columns)})"
        )
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's BOM
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not a UTF-8 text CSV ({err.reason} at byte {err.start})"
        ) from err
    except csv.Error as err:
        raise ValueError(f"{path} is not a readable CSV: {err}") from err
    if header:
        if not rows:
            raise ValueError(f"{path} is empty; expected header {','.join(columns)}")
        found = [c.strip() for c in rows[0]]
        missing = [c for c in columns if c not in found]
        if missing:
            raise ValueError(
                f"{path} has columns {found}; expected {list(columns)} (missing {missing})"
            )
        index = [found.index(c) for c in columns]
        rows = rows[1:]
    else:
        index = list(range(len(columns)))
    ids, values = [], []
    for lineno, row in enumerate(rows, start=2 if header else 1):
        if len(row) <= max(index):
            raise ValueError(
                f"{path} line {lineno} has {len(row)} fields; expected columns {list(columns)}"
            )
        if not row[index[0]].strip():
            raise ValueError(f"{path} line {lineno} has an empty {columns[0]!r}")
        ids.append(row[index[0]].strip())
        values.append([row[i].strip() for i in index[1:]])
    return ids, np.asarray(values, dtype=object).reshape(len(ids), len(columns) - 1)


def binary_columns(values: np.ndarray, path: Path, columns: Sequence[str]) -> np.ndarray:
    try:
        out = values.astype(np.float32)
    except ValueError as err:
        raise ValueError(f"{path}: non-numeric value in columns {list(columns)}: {err}") from err
    if not np.isin(out, (0.0, 1.0)).all():
        raise ValueError(f"{path}: columns {list(columns)} must hold 0/1 values")
    return out


def unique_rows(
    ids: list[str], values: np.ndarray, path: Path, skip_bad: bool = False
) -> tuple[list[str], np.ndarray]:
    """``ids`` and their label rows with each id once.

    An id listed twice with different labels raises ``ValueError`` (which label is right cannot be
    told); one listed twice with the same labels raises too, unless ``skip_bad``, which keeps its
    first row (with a logged warning).
    """
    first: dict[str, int] = {}
    repeats: list[int] = []
    for k, i in enumerate(ids):
        if i in first:
            repeats.append(k)
        else:
            first[i] = k
    if not repeats:
        return ids, values

    def same(k: int) -> bool:
        return bool(np.array_equal(values[k], values[first[ids[k]]]))

    conflicting = [ids[k] for k in repeats if not same(k)]
    if conflicting:
        raise ValueError(
            f"{path}: {len(conflicting)} image ids are listed twice with different labels "
            f"(first: {', '.join(dict.fromkeys(conflicting[:5]))}); fix the CSV"
        )
    if not skip_bad:
        shown = ", ".join(dict.fromkeys(ids[k] for k in repeats[:5]))
        raise ValueError(
            f"{path}: {len(repeats)} rows repeat an image id already listed (first: {shown}); "
            "remove them, or skip_bad=True (--skip-bad) keeps the first row of each"
        )
    log.warning("%s: %d repeated rows left out (same labels)", path, len(repeats))
    keep = sorted(first.values())
    return [ids[k] for k in keep], values[keep]


def find_image(folder: Path, image_id: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        p = folder / f"{image_id}{suffix}"
        if p.is_file():
            return p
    return None


def optional_file(path: Path) -> Path | None:
    return path if path.is_file() else None
