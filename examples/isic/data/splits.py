"""Seeded, lesion-grouped, stratified train/val/test splits (ISIC 2018 has no official val split).

HAM10000 holds several images of one lesion (``lesion_id`` in ``HAM10000_metadata.csv``); a split
by image leaks lesions between train and test. :func:`lesion_split` splits *lesions*, stratified by
class, with scikit-learn's ``StratifiedGroupKFold``: the test split is one of ``round(1 /
test_fraction)`` folds, the validation split one of ``round((1 - test_fraction) / val_fraction)``
folds of the rest, so fractions are met to within a fold's granularity.

    >>> assignment = lesion_split(ids, labels, lesion_ids, seed=0)   # doctest: +SKIP
    >>> assignment["ISIC_0024306"]
    'train'
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...run.files import atomic_write

__all__ = ["SPLITS", "get_or_make_split", "lesion_split", "read_lesion_groups"]

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def read_lesion_groups(root: str | os.PathLike, ids: Sequence[str]) -> dict[str, str]:
    """``{image id: lesion id}`` from ``HAM10000_metadata.csv`` or the 2018 LesionGroupings CSV.

    Images the file does not list (or all, when neither file exists, with a warning) form a group
    of their own.
    """
    root = Path(root)
    candidates = [
        (root / "HAM10000_metadata.csv", "image_id"),
        (
            root / "ISIC2018_Task3_Training_GroundTruth"
            / "ISIC2018_Task3_Training_LesionGroupings.csv",
            "image",
        ),
    ]  # fmt: skip
    groups: dict[str, str] = {}
    for path, id_col in candidates:
        if not path.is_file():
            continue
        try:
            with path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                fields = [f.strip() for f in reader.fieldnames or []]
                reader.fieldnames = fields
                if id_col not in fields or "lesion_id" not in fields:
                    raise ValueError(
                        f"{path} has columns {fields}; expected {id_col!r} and 'lesion_id'"
                    )
                groups = {
                    (row[id_col] or "").strip(): (row["lesion_id"] or "").strip() for row in reader
                }
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not a UTF-8 text CSV ({err.reason})") from err
        break
    else:
        log.warning(
            "no lesion grouping file under %s (HAM10000_metadata.csv): splitting by image", root
        )
    return {i: groups.get(i) or i for i in ids}


def lesion_split(
    ids: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    lesion_ids: Sequence[str],
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> dict[str, str]:
    """Assign each image id to ``"train"``, ``"val"`` or ``"test"``, grouped by lesion.

    Args:
        ids: image ids ``(N,)``.
        labels: integer class per image ``(N,)`` (stratification target).
        lesion_ids: lesion of each image ``(N,)``; images of one lesion share a split.
        seed: shuffling seed; the same inputs and seed give the same split.
        val_fraction, test_fraction: approximate fractions of images (0 disables the split).
    """
    labels = np.asarray(labels)
    n = len(ids)
    if not (len(labels) == len(lesion_ids) == n):
        raise ValueError(
            f"ids, labels and lesion_ids must have one entry per image, got {n}, {len(labels)}, "
            f"{len(lesion_ids)}"
        )
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}"
        )
    groups = np.asarray(lesion_ids)
    names, group_index = np.unique(groups, return_inverse=True)
    assignment = np.full(n, "train", dtype=object)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    totals = {c: int((labels == c).sum()) for c in classes}
    taken = {c: {"test": 0, "val": 0} for c in classes}
    targets = {"test": test_fraction, "val": val_fraction}
    by_group = np.split(
        np.argsort(group_index, kind="stable"), np.cumsum(np.bincount(group_index))[:-1]
    )
    for g in rng.permutation(len(names)):
        members = by_group[g]
        values, counts = np.unique(labels[members], return_counts=True)
        c, size = values[counts.argmax()], len(members)  # a lesion's (majority) class
        for name in ("test", "val"):
            target = targets[name] * totals[c]
            if abs(taken[c][name] + size - target) < abs(taken[c][name] - target):
                taken[c][name] += size
                assignment[members] = name
                break
    return dict(zip(ids, assignment.tolist(), strict=True))


def get_or_make_split(
    ids: Sequence[str],
    labels: np.ndarray,
    lesion_ids: Sequence[str],
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    split_file: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    on_mismatch: str = "replace",
) -> dict[str, str]:
    """The split from ``split_file`` when it holds one made with these settings, else
    :func:`lesion_split` (saved there).

    The file is JSON ``{"seed", "val_fraction", "test_fraction", "assignment": {id: split}}``,
    written atomically; it must not lie inside ``data_root``. A file made with another seed or other
    fractions, one that misses some ids, or one that cannot be read is stale: with
    ``on_mismatch="replace"`` it is recomputed and overwritten (with a logged warning), with
    ``"error"`` (a run being resumed, whose split must not change) it raises ``ValueError``.
    """
    if on_mismatch not in ("replace", "error"):
        raise ValueError(f"on_mismatch must be 'replace' or 'error', got {on_mismatch!r}")
    settings = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction}
    if split_file is not None:
        split_file = Path(split_file).expanduser()
        if data_root is not None:
            root = Path(data_root).resolve()
            if root in split_file.resolve().parents:
                raise ValueError(f"split_file {split_file} lies inside the data folder {root}")
        if split_file.is_file():
            assignment, problem = _read_split(split_file, ids, settings)
            if problem is None:
                return assignment
            if on_mismatch == "error":
                raise ValueError(
                    f"split file {split_file} {problem}; it belongs to another run: keep its "
                    "settings, or start a new run in another --out"
                )
            log.warning("split file %s %s: recomputing it", split_file, problem)
    assignment = lesion_split(ids, labels, lesion_ids, seed, val_fraction, test_fraction)
    if split_file is not None:
        payload = {**settings, "assignment": assignment}
        text = json.dumps(payload, indent=1, sort_keys=True)
        atomic_write(split_file, lambda fh: fh.write(text.encode()))
    return assignment


def _read_split(
    path: Path, ids: Sequence[str], settings: dict[str, float]
) -> tuple[dict[str, str], str | None]:
    """The assignment of a split file and what makes it unusable for ``ids`` and ``settings``."""
    try:
        payload = json.loads(path.read_text())
        assignment = payload["assignment"]
        if not isinstance(assignment, dict):
            raise TypeError("'assignment' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        return {}, f"cannot be read ({type(err).__name__}: {err})"
    stored = {k: payload.get(k) for k in settings}
    if stored != settings:
        differ = ", ".join(f"{k} {stored[k]!r} (now {v!r})" for k, v in settings.items()
                           if stored[k] != v)  # fmt: skip
        return assignment, f"was made with other settings: {differ}"
    missing = [i for i in ids if i not in assignment]
    if missing:
        return assignment, f"misses {len(missing)} image ids (first: {', '.join(missing[:5])})"
    bad = sorted({str(v) for v in assignment.values() if v not in SPLITS})
    if bad:
        return assignment, f"has unknown split names {bad}"
    return assignment, None
