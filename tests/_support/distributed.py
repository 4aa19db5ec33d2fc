"""A script run as the ranks of a torchrun launch, without torchrun's three fresh interpreters."""

from __future__ import annotations

import multiprocessing
import os
import socket


def _rank(rank: int, world_size: int, port: int, code: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")  # fmt: skip
    import torch

    torch.set_num_threads(1)
    exec(compile(code, "ddp.py", "exec"), {"__name__": "__main__"})


def run_ranks(code: str, world_size: int, timeout: float = 120.0) -> list[int | None]:
    """Runs ``code`` as ranks ``0 .. world_size - 1`` with the environment torchrun gives its workers
    (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); their exit codes
    (``None``: still running at ``timeout``, then killed).

    The ranks are forks of a fork server that has imported torch and the example engine once (a
    fork of the test process itself would inherit autograd's threads, which torch refuses)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "tests._support.training", __name__])
    procs = [ctx.Process(target=_rank, args=(r, world_size, port, code)) for r in range(world_size)]
    for p in procs:
        p.start()
    codes = []
    for p in procs:
        p.join(timeout)
        codes.append(p.exitcode)
        if p.exitcode is None:
            p.kill()
            p.join()
    return codes
