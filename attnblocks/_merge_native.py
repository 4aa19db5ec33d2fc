"""The ``native`` ARL merge backend: one fused C++ loop nest per block on CPU (float32, NCHW).

The kernels (``csrc/arl_merge.cpp``) apply the block's last BatchNorm and the shortcut projection's
BatchNorm on the fly, compute the spatial softmax (or sigmoid) one ``(n, c)`` plane at a time while
the plane is in cache, and write only the block output; backward folds the ReLU, merge, softmax and
BatchNorm backward into one pass per channel. The source is compiled once per machine with the
system C++ compiler (``$CXX``, else ``c++``/``g++``/``clang++``; OpenMP and ``-march=native``) into
a cache directory (``$ATTNBLOCKS_CACHE_DIR``, else ``$XDG_CACHE_HOME/attnblocks`` or
``~/.cache/attnblocks``) and loaded with ctypes: no PyTorch headers, about a second to build.

Where it does not apply (CUDA, other dtypes, channels_last, channel or custom normalizations) or no
compiler is found, :mod:`attnblocks.merge` runs the ``eager`` kernels instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["NativeMerge", "native_available", "native_error", "native_fits", "native_forward"]

SPATIAL, SIGMOID = 0, 1  # the kernels' normalization codes
_SOURCE = Path(__file__).with_name("csrc") / "arl_merge.cpp"
_ABI = 4
_FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fno-math-errno", "-fopenmp", "-fPIC"]
_FLAGS += ["-shared", "-std=c++17"]
if platform.machine().lower() in ("x86_64", "amd64"):
    _FLAGS.append("-mprefer-vector-width=512")  # where AVX-512 exists, use its full width

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None
_tried = False

_P = ctypes.c_void_p
_I64, _F, _INT = ctypes.c_int64, ctypes.c_float, ctypes.c_int
_SIGNATURES = {
    "ab_abi_version": ([], _INT),
    "ab_channel_stats": ([_P, _I64, _I64, _I64, ctypes.c_double, _P, _P, _P, _INT], None),
    "ab_bn_affine": ([_P, _P, _P, _P, _I64, _P, _P], None),
    "ab_merge_fwd": (
        [_P, _P, _P, _I64, _I64, _I64, _P, _P, _P, _P, _F, _P, _INT, _INT, _INT],
        None,
    ),
    "ab_merge_bwd": (
        [_P, _P, _P, _P, _I64, _I64, _I64, _P, _P, _P, _P, _F, _P, _INT, _P, _P]
        + [_INT, _P, _P, _INT, _INT, _P, _P, _INT, _P, _P, _P, _P, _P, _INT],
        None,
    ),
}


def _cache_dir() -> Path:
    if os.environ.get("ATTNBLOCKS_CACHE_DIR"):
        return Path(os.environ["ATTNBLOCKS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnblocks"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the CPU model and its feature flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            lines = [ln for ln in fh if ln.startswith(("flags", "model name"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


def _build(cxx: str) -> Path:
    """Compile the kernels (once per source, compiler and CPU) and return the library's path."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(
        source + cxx.encode() + version.stdout.encode() + " ".join(_FLAGS).encode()
        + _cpu_key().encode()
    ).hexdigest()[:16]  # fmt: skip
    target = _cache_dir() / f"arl_merge-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".arl_merge-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [cxx, *_FLAGS, str(_SOURCE), "-o", tmp], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{cxx} failed: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)  # atomic: a concurrent build writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load() -> ctypes.CDLL | None:
    global _lib, _error, _tried
    with _lock:
        if _tried:
            return _lib
        _tried = True
        try:
            if platform.system() != "Linux":
                raise RuntimeError(
                    f"the native merge is built on Linux only, not {platform.system()}"
                )
            cxx = _compiler()
            if cxx is None:
                raise RuntimeError("no C++ compiler found ($CXX, c++, g++ or clang++)")
            lib = ctypes.CDLL(str(_build(cxx)))
            for name, (args, res) in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, res
            if lib.ab_abi_version() != _ABI:
                raise RuntimeError("stale native merge library (ABI version mismatch)")
            _lib = lib
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _error = f"{type(exc).__name__}: {exc}"
        return _lib


def native_available() -> bool:
    """True if the fused C++ kernels are built (building them on first call) and loaded."""
    return _load() is not None


def native_error() -> str | None:
    """Why the kernels could not be built or loaded (None if they were, or were not tried yet)."""
    return _error


def native_fits(
    t: Tensor, u: Tensor, alpha: Tensor, scale: Tensor | None, params: tuple[Tensor | None, ...]
) -> bool:
    """True if the kernels handle these tensors: CPU float32 (norm parameters and statistics too),
    contiguous NCHW, non-empty."""
    for x in (t, u):
        if x.dim() != 4 or not x.is_contiguous() or x.numel() == 0:
            return False
    return all(
        x.device.type == "cpu" and x.dtype == torch.float32
        for x in (t, u, alpha, scale, *params)
        if x is not None
    )


def _ptr(x: Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def _norm_stats(x: Tensor, p: tuple[Tensor | None, ...], bn: Any) -> tuple[Tensor, Tensor]:
    """``(mean, invstd)`` per channel of a BatchNorm over ``x``: batch statistics in train mode
    (running ones updated as ``nn.BatchNorm2d`` does), running ones in eval; rounded as PyTorch's
    CPU kernel rounds them."""
    w, b, rm, rv = p
    n, c, h, wd = x.shape
    if not bn.train:
        return rm.contiguous(), torch.rsqrt(rv + bn.eps)
    stats, var_sum = torch.empty(2, c, dtype=torch.float32), torch.empty(c, dtype=torch.float32)
    mean, invstd = stats.unbind()  # one storage, as the plain norm's saved statistics
    _lib.ab_channel_stats(
        x.data_ptr(), n, c, h * wd, bn.eps, mean.data_ptr(), var_sum.data_ptr(),
        invstd.data_ptr(), _nt(),
    )  # fmt: skip
    if rm is not None and rv is not None:  # mean bit-exact with PyTorch's CPU kernel, var to 1 ulp
        m, count = bn.momentum, n * h * wd
        with torch.no_grad():
            rm.copy_(mean * m + rm * (1 - m))
            rv.copy_(var_sum / (count - 1) * m + rv * (1 - m))
    return mean, invstd


def _affine(
    mean: Tensor | None, invstd: Tensor | None, w: Tensor | None, b: Tensor | None
) -> tuple[Tensor | None, Tensor | None]:
    """Per-channel ``(scale, shift)`` with ``norm(x) = fma(x, scale, shift)`` (None, None without
    a norm), rounded as PyTorch's CPU kernel rounds them."""
    if mean is None or invstd is None:
        return None, None
    k, shift = torch.empty(2, mean.numel(), dtype=torch.float32).unbind()
    _lib.ab_bn_affine(
        mean.data_ptr(), invstd.data_ptr(), _ptr(w), _ptr(b), mean.numel(), k.data_ptr(),
        shift.data_ptr(),
    )  # fmt: skip
    return k, shift


def _nt() -> int:
    return torch.get_num_threads()


def native_forward(
    t: Tensor,
    u: Tensor,
    alpha: Tensor,
    scale: Tensor | None,
    cfg: Any,
    norm: int,
    fp: tuple[Tensor | None, ...],
    sp: tuple[Tensor | None, ...],
) -> tuple[Tensor, tuple[Tensor | None, Tensor | None], tuple[Tensor | None, Tensor | None]]:
    """The fused forward; returns ``(y, (mean, invstd) of F's norm, (mean, invstd) of s's norm)``
    (None, None for a missing norm)."""
    none2 = (None, None)
    f = _norm_stats(t, fp, cfg.f_norm) if cfg.f_norm else none2
    s = _norm_stats(u, sp, cfg.s_norm) if cfg.s_norm else none2
    fk, fb = _affine(*f, fp[0], fp[1])
    sk, sb = _affine(*s, sp[0], sp[1])
    n, c, h, w = t.shape
    y = torch.empty_like(t)
    d = None if scale is None else scale.reshape(-1).float().contiguous()
    _lib.ab_merge_fwd(
        t.data_ptr(), u.data_ptr(), y.data_ptr(), n, c, h * w,
        _ptr(fk), _ptr(fb), _ptr(sk), _ptr(sb), float(alpha), _ptr(d),
        norm, int(cfg.relu), _nt(),
    )  # fmt: skip
    return y, f, s


class NativeMerge(torch.autograd.Function):
    """:class:`attnblocks._merge_op._ARLMerge` on the fused C++ kernels; same inputs and outputs.

    Saved for backward: ``t`` and ``u`` (the norms' inputs, which plain norm layers save too), ``y``
    (ReLU only) and per-channel statistics: byte for byte what the plain block saves.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        t: Tensor,
        u: Tensor,
        alpha: Tensor,
        scale: Tensor | None,
        cfg: Any,
        norm: int,
        *params: Tensor | None,
    ) -> Tensor:
        fp, sp = params[0:4], params[4:8]
        y, f, s = native_forward(t, u, alpha, scale, cfg, norm, fp, sp)
        ctx.cfg, ctx.norm = cfg, norm
        ctx.alpha, ctx.alpha_shape = float(alpha), alpha.shape
        ctx.save_for_backward(t, u, y if cfg.relu else None, scale, *fp[:2], *f, *sp[:2], *s)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        cfg = ctx.cfg
        t, u, y, scale, fw, fb, fmean, finv, sw, sb, smean, sinv = ctx.saved_tensors
        f_k, f_b = _affine(fmean, finv, fw, fb)
        s_k, s_b = _affine(smean, sinv, sw, sb)
        n, c, h, w = t.shape
        dy = dy.float().contiguous()
        gf, gs = torch.empty_like(t), torch.empty_like(u)
        sums = torch.empty(5, c, dtype=torch.float64)
        d = None if scale is None else scale.reshape(-1).float().contiguous()
        f_mode = 0 if cfg.f_norm is None else (2 if cfg.f_norm.train else 1)
        s_mode = 0 if cfg.s_norm is None else (2 if cfg.s_norm.train else 1)
        need = ctx.needs_input_grad
        _lib.ab_merge_bwd(
            dy.data_ptr(), _ptr(y), t.data_ptr(), u.data_ptr(), n, c, h * w,
            _ptr(f_k), _ptr(f_b), _ptr(s_k), _ptr(s_b), ctx.alpha, _ptr(d), ctx.norm,
            gf.data_ptr(), gs.data_ptr(), f_mode, _ptr(fmean), _ptr(finv), int(need[0]),
            s_mode, _ptr(smean), _ptr(sinv), int(need[1]),
            sums[0].data_ptr(), sums[1].data_ptr(), sums[2].data_ptr(), sums[3].data_ptr(),
            sums[4].data_ptr(), _nt(),
        )  # fmt: skip
        d_fw = (sums[1] * finv).float() if fw is not None else None
        d_fb = sums[0].float() if fb is not None else None
        d_sw = (sums[3] * sinv).float() if sw is not None else None
        d_sb = sums[2].float() if sb is not None else None
        d_alpha = sums[4].sum().float().reshape(ctx.alpha_shape)
        return (
            gf if need[0] else None, gs if need[1] else None, d_alpha, None, None, None,
            d_fw, d_fb, None, None, d_sw, d_sb, None, None,
        )  # fmt: skip
