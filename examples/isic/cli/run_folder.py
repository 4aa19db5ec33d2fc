"""The run folder (``--out``): created, locked for one process, checked, and its ``config.json``.

What a run writes there: ``config.json``, ``log.csv``, ``metrics.json``, ``predictions.csv``,
``checkpoints/``, ``tb/`` and ``plots/`` (:data:`RUN_OUTPUTS`); a folder holding any of them holds
a run, which only ``--resume`` continues.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from examples.run import environment, write_json

from .flags import run_settings

try:  # POSIX: the run-folder lock; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = [
    "RUN_OUTPUTS",
    "default_out_dir",
    "prepare_out_dir",
    "release_out_dir",
    "run_outputs",
    "save_config",
    "script_main",
]


def default_out_dir(script: str) -> Path:
    """``runs/<script>-<YYYYmmdd-HHMMSS>`` under the current folder."""
    return Path("runs") / f"{script}-{time.strftime('%Y%m%d-%H%M%S')}"


# What a run writes into its folder: any of them there means the folder holds a run.
RUN_OUTPUTS = ("config.json", "log.csv", "metrics.json", "predictions.csv", "checkpoints", "tb",
               "plots")  # fmt: skip
_HELD_LOCKS: dict[Path, int] = {}


def _lock_out_dir(out: Path) -> None:
    """Own ``out`` for this process: an exclusive ``flock`` on ``OUT/.lock``.

    The operating system drops the lock when the process ends, however it ends (a killed run leaves
    no stale lock). Raises ``ValueError`` when another process holds it.
    """
    if fcntl is None or out in _HELD_LOCKS:
        return
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ValueError(
                f"--out {out} is in use by another run (process {owner}); wait for it to end or "
                "choose another --out"
            ) from None
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # e.g. some NFS mounts
            print(f"warning: {out} does not support file locks ({exc.strerror}); nothing stops "
                  "another run from writing into it", file=sys.stderr)  # fmt: skip
            return
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD_LOCKS[out] = fd


def release_out_dir(out: str | os.PathLike) -> None:
    """Give up this process's lock on the run folder ``out`` (see :func:`prepare_out_dir`)."""
    fd = _HELD_LOCKS.pop(Path(out).expanduser().resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def script_main(main: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a script's ``main``: the run folders it locked are released when it returns or
    raises (a process that ends releases them anyway; this matters when ``main`` is called again
    in the same process)."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = set(_HELD_LOCKS)
        try:
            return main(*args, **kwargs)
        finally:
            for out in set(_HELD_LOCKS) - before:
                release_out_dir(out)

    return wrapper


def run_outputs(out: Path) -> list[str]:
    """The run outputs (:data:`RUN_OUTPUTS`) present in ``out``; empty folders do not count."""
    found = []
    for name in RUN_OUTPUTS:
        p = out / name
        if p.is_file() or (p.is_dir() and any(p.iterdir())):
            found.append(name + ("/" if p.is_dir() else ""))
    return found


def prepare_out_dir(out: Path, resume: bool, data_root: Path | None = None) -> Path:
    """Create, lock and check the run folder before anything is trained.

    The folder is owned by one process at a time (:func:`_lock_out_dir`; under ``torchrun`` rank 0
    calls this). Raises ``ValueError`` when it cannot be created or written, when it lies inside
    the data folder, when another run holds it, when ``resume`` is set but it holds no
    ``checkpoints/last.pt``, or when it already holds a run (any of :data:`RUN_OUTPUTS`) and
    ``resume`` is not set.
    """
    out = Path(out).expanduser().resolve()
    if data_root is not None:
        root = Path(data_root).expanduser().resolve()
        if out == root or root in out.parents:
            raise ValueError(f"--out {out} lies inside --data-root {root}; runs never write there")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"--out {out} is not a writable folder: {exc.strerror or exc}") from exc
    _lock_out_dir(out)
    last = out / "checkpoints" / "last.pt"
    found = run_outputs(out)
    if resume and not last.is_file():
        if found:
            raise ValueError(
                f"--resume: no checkpoint at {last}: the run in {out} stopped before the end of "
                f"its first epoch (it holds {', '.join(found)}); delete them or choose another "
                "--out, and start without --resume"
            )
        raise ValueError(f"--resume: no checkpoint at {last}; start without --resume")
    if not resume and found:
        raise ValueError(
            f"--out {out} already holds a run ({', '.join(found)}); pass --resume to continue it "
            "or choose another --out"
        )
    return out


def save_config(
    out: Path, args: argparse.Namespace, device: torch.device | str = "cpu", **extra: Any
) -> dict[str, Any]:
    """Write ``OUT/config.json``: every resolved setting, ``extra`` and the run's environment
    (:func:`examples.run.environment`: code version, libraries, ``device``, threads)."""
    config = {"settings": run_settings(args), **extra, "environment": environment(device)}
    write_json(Path(out) / "config.json", config)
    return config
