"""Devices and autocast for the ``--device`` and ``--amp`` flags of the scripts and benchmarks."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

__all__ = ["AMP_DTYPES", "autocast", "check_amp", "resolve_device"]

# ``--amp`` value -> autocast dtype (None: no autocast)
AMP_DTYPES: dict[str, torch.dtype | None] = {
    "none": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def resolve_device(name: str) -> torch.device:
    """``"auto" | "cpu" | "cuda" | "cuda:N"`` -> a device; ``auto`` picks CUDA when available.

    Raises:
        ValueError: for an unknown name, or CUDA asked for on a machine without it.
    """
    if not isinstance(name, str):
        raise TypeError(f"--device must be a string, got {type(name).__name__}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: no CUDA device is available to this PyTorch "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
                "use --device cpu"
            )
        return torch.device(name)
    raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")


def check_amp(amp: str, device: torch.device) -> None:
    """``amp`` is a key of :data:`AMP_DTYPES`; ``fp16`` autocast needs CUDA (CPU: ``bf16``)."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"--amp must be one of {list(AMP_DTYPES)}, got {amp!r}")
    if amp == "fp16" and torch.device(device).type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; on CPU use --amp bf16")


def autocast(device: torch.device, amp: str) -> AbstractContextManager:
    """The autocast context for ``amp`` (a key of :data:`AMP_DTYPES`; a no-op for ``"none"``)."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {list(AMP_DTYPES)}, got {amp!r}")
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
