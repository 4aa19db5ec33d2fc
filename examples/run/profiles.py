"""Profiles: the defaults of the flags a user left unset (``None``), e.g. the paper's protocol,
the ``--quick`` smoke profile or a benchmark's full run."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

__all__ = ["fill_defaults"]


def fill_defaults(args: argparse.Namespace, *profiles: Mapping[str, Any]) -> argparse.Namespace:
    """Set every attribute of ``args`` that is ``None`` (or absent) and named in a profile.

    Precedence: the command line, then the profiles in the order given (the first that names a
    flag gives its value). Returns ``args``.
    """
    for key in {k: None for profile in profiles for k in profile}:
        if getattr(args, key, None) is None:
            value = next(profile[key] for profile in profiles if key in profile)
            setattr(args, key, value)
    return args
