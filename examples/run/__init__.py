"""The run set-up that the example scripts and the benchmarks share.

- :mod:`.device`: ``--device`` names to a :class:`torch.device`, the ``--amp`` autocast table.
- :mod:`.files`: atomic writes (JSON, ``torch.save``, any writer that takes a path or a file) and
  the errors a run reports as one line.
- :mod:`.record`: the git commit and the software/hardware environment of a run.
- :mod:`.profiles`: fill the flags left unset from a profile (the paper's, ``--quick``'s, ...).
- :mod:`.seeding`: seed python's, numpy's and torch's generators.
"""

from .device import AMP_DTYPES, autocast, check_amp, resolve_device
from .files import (
    OutputWriteError,
    RunError,
    atomic_path,
    atomic_save,
    atomic_write,
    write_json,
)
from .profiles import fill_defaults
from .record import environment, git_state
from .seeding import seed_everything

__all__ = [
    "AMP_DTYPES",
    "OutputWriteError",
    "RunError",
    "atomic_path",
    "atomic_save",
    "atomic_write",
    "autocast",
    "check_amp",
    "environment",
    "fill_defaults",
    "git_state",
    "resolve_device",
    "seed_everything",
    "write_json",
]
