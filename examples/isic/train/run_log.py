"""The per-epoch record of a training run: ``OUT/log.csv`` and TensorBoard events in ``OUT/tb``."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from examples.run import OutputWriteError, atomic_write

__all__ = ["RunLog"]


class RunLog:
    """``log.csv`` (rewritten atomically with every epoch so far) and TensorBoard scalars.

    The TensorBoard writer opens at the first row, so a run that never finishes an epoch leaves
    no ``tb/`` folder.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self._tb = None

    def write_csv(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite ``log.csv`` with one row per epoch of ``history`` (columns: every key seen)."""
        columns: list[str] = []
        for row in history:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
        path = self.out_dir / "log.csv"
        try:
            atomic_write(path, lambda fh: fh.write(buf.getvalue().encode()))
        except OSError as err:
            raise OutputWriteError(f"cannot write {path}: {err.strerror or err}") from err

    def add_row(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Record the last row of ``history``: ``log.csv`` with every epoch, TensorBoard scalars."""
        self.write_csv(history)
        row = history[-1]
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tb"))
        for k, v in row.items():
            if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool):
                self._tb.add_scalar(k, v, row["epoch"])
        self._tb.flush()

    def flush(self) -> None:
        """Flush the TensorBoard events written so far."""
        if self._tb is not None:
            self._tb.flush()
