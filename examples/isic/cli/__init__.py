"""What every example script shares to start a run.

- :mod:`.flags`: the common flags, their checks, the profiles (paper, ``--quick``).
- :mod:`.run_folder`: ``--out``: created, locked, checked; ``config.json``.
- :mod:`.launch`: the device and ``torchrun``'s process group; errors printed as one line.
"""

from .flags import (
    ADDED_DEFAULTS,
    MAY_CHANGE_ON_RESUME,
    add_common_args,
    check_common_args,
    check_numbers,
    resolve_profile,
    resume_settings,
    run_settings,
)
from .launch import run_cli, setup_device
from .run_folder import (
    RUN_OUTPUTS,
    default_out_dir,
    prepare_out_dir,
    release_out_dir,
    save_config,
    script_main,
)

__all__ = [
    "ADDED_DEFAULTS",
    "MAY_CHANGE_ON_RESUME",
    "RUN_OUTPUTS",
    "add_common_args",
    "check_common_args",
    "check_numbers",
    "default_out_dir",
    "prepare_out_dir",
    "release_out_dir",
    "resolve_profile",
    "resume_settings",
    "run_cli",
    "run_settings",
    "save_config",
    "script_main",
    "setup_device",
]
