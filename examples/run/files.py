"""Atomic writes: a reader (or a run killed mid-write) never sees half a file.

Every writer writes into a temporary file beside the destination and ``os.replace``-s it onto the
destination; on any error the temporary file is removed and the old file, if any, is untouched.
The new file gets the mode a plain ``open`` would give (``0o666`` less the umask).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "OutputWriteError",
    "RunError",
    "atomic_path",
    "atomic_save",
    "atomic_write",
    "write_json",
]


class RunError(RuntimeError):
    """A run that cannot go on for a reason outside the code (the scripts print it as one
    ``error:`` line and exit with code 2)."""


class OutputWriteError(RunError):
    """An output file (checkpoint, log, figure) could not be written: full disk, no permission."""


def _umask() -> int:
    """This process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest`` (same suffix) to write to; on a clean exit it
    replaces ``dest``, on an error it is removed. For writers that take a path
    (``fig.savefig``, ``onnx.save``, ``torch.save``)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.stem}.", suffix=dest.suffix)
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
        os.close(fd)
        yield tmp
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(dest: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """``write(fh)`` into a temporary binary file beside ``dest``, then replace ``dest``."""
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        write(fh)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """``obj`` as indented JSON (non-JSON values through ``str``), written atomically."""
    text = json.dumps(obj, indent=indent, default=str) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode()))
    return Path(path)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically. A failed write (full disk, no permission) leaves ``path`` as it
    was and raises :class:`OutputWriteError` naming it."""
    import torch

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as err:  # torch reports a short write as a RuntimeError
        if isinstance(err, OSError):
            reason = err.strerror or str(err)
            full = err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        else:
            reason, full = str(err).strip().splitlines()[0] if str(err).strip() else "", True
        raise OutputWriteError(
            f"cannot write {path}: {reason}{' (is the disk full?)' if full else ''}; the previous "
            f"{path.name}, if any, is intact"
        ) from err
