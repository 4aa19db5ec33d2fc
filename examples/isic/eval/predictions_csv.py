"""The official ISIC submission format: one row per image, one probability column per class."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from examples.run import atomic_write

from .arrays import as_finite_array

__all__ = ["write_predictions_csv"]


def write_predictions_csv(
    path: str | os.PathLike,
    ids: Sequence[str],
    probs: Tensor | np.ndarray,
    columns: Sequence[str],
    id_column: str = "image",
) -> Path:
    """Write predictions in the official submission format, atomically.

    Header ``id_column,<columns>``: ISIC 2017 uses ``image_id,melanoma,seborrheic_keratosis``,
    ISIC 2018 ``image,MEL,NV,...`` (the datasets' ``csv_id_column`` and ``csv_columns``).
    ``probs`` is ``(N, len(columns))`` in [0, 1]. Written to a temporary file in the same folder,
    then renamed.
    """
    p = as_finite_array(probs, "probs")
    if p.ndim == 1 and len(columns) == 1:
        p = p[:, None]
    if p.shape != (len(ids), len(columns)):
        raise ValueError(
            f"probs must be ({len(ids)}, {len(columns)}) for {len(ids)} ids and columns "
            f"{list(columns)}, got {p.shape}"
        )
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    if len(set(ids)) != len(ids):
        raise ValueError("write_predictions_csv: duplicate image ids")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([id_column, *columns])
    for image_id, row in zip(ids, p, strict=True):
        writer.writerow([image_id, *(repr(float(v)) for v in row)])
    path = Path(path)
    atomic_write(path, lambda fh: fh.write(buf.getvalue().encode()))
    return path
