"""Starting a script: its device (and ``torchrun``'s process group), and its errors as one line."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from examples.run import RunError, check_amp, resolve_device

from ..train.distributed import DistInfo, init_distributed

__all__ = ["run_cli", "setup_device"]


def setup_device(name: str, amp: str) -> tuple[torch.device, DistInfo]:
    """:func:`examples.run.resolve_device` and :func:`~examples.run.check_amp`, then join
    ``torchrun``'s process group, if any.

    Returns the device and this process's :class:`~examples.isic.train.distributed.DistInfo`; on
    CUDA the device is ``cuda:LOCAL_RANK``.
    """
    device = resolve_device(name)
    check_amp(amp, device)
    dist_info = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    return device, dist_info


# errors of the environment that a run reports in one line (full disk, permissions, ...)
_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
               errno.EFBIG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR}  # fmt: skip


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)``; bad input (``ValueError``, a missing file), a divergence or a failed
    write (:class:`~examples.run.RunError`) and errors of the environment (full disk, no
    permission) print one ``error: ...`` line and exit with code 2."""
    try:
        main(argv)
    except (ValueError, RunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:
        if not (isinstance(exc, FileNotFoundError) or exc.errno in _ENV_ERRNOS):
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        raise SystemExit(2) from None
