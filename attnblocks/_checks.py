"""Argument checks shared by the public constructors and functions: a value is checked as the type it
is used as (a float with ``math.isfinite``, a bool is not a number, an int is not a float), and a bad
one raises ``TypeError``/``ValueError`` naming the parameter and the value."""

from __future__ import annotations

import math
import numbers

import torch


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def check_real(
    value: object,
    name: str,
    where: str = "",
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if low is None and high is None:
        need = "a finite number"
    elif high is None:
        need = f"a finite number {'>' if low_open else '>='} {low:g}"
    elif low is None:
        need = f"a finite number <= {high:g}"
    else:
        need = f"a finite number in {'(' if low_open else '['}{low:g}, {high:g}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{_prefix(where)}{name} must be {need}, got {value!r}")
    v = float(value)
    bad = (
        not math.isfinite(v)
        or (low is not None and (v <= low if low_open else v < low))
        or (high is not None and v > high)
    )
    if bad:
        raise ValueError(f"{_prefix(where)}{name} must be {need}, got {value!r}")
    return v


def check_int(value: object, name: str, where: str = "", *, low: int | None = None) -> int:
    """``value`` as an int (not a bool, not a float) ``>= low``."""
    need = "an int" if low is None else f"an int >= {low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{_prefix(where)}{name} must be {need}, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{_prefix(where)}{name} must be {need}, got {value!r}")
    return int(value)


def check_flag(value: object, name: str, where: str = "") -> bool:
    """``value`` as a bool (a truthy string or number is refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{_prefix(where)}{name} must be True or False, got {value!r}")
    return value


def check_size(size: object, name: str = "size") -> tuple[int, int]:
    """``size`` as ``(H, W)`` positive ints; a float, a bool or a NaN side is refused."""
    if isinstance(size, (str, bytes)) or not isinstance(size, (tuple, list, torch.Size)):
        raise TypeError(f"{name} must be (H, W), a pair of positive ints, got {size!r}")
    if len(size) != 2:
        raise ValueError(f"{name} must be (H, W) with positive sides, got {tuple(size)}")
    for side in size:
        if isinstance(side, bool) or not isinstance(side, numbers.Integral):
            raise TypeError(f"{name} must be (H, W), a pair of positive ints, got {tuple(size)}")
    if any(int(s) <= 0 for s in size):
        raise ValueError(f"{name} must be (H, W) with positive sides, got {tuple(size)}")
    return int(size[0]), int(size[1])
