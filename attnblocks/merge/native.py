"""The ARL merge op's fused CPU kernels: one C++ loop nest per block (float32, NCHW or channels_last).

The kernels (``csrc/arl_merge.cpp``) apply the block's last BatchNorm and the shortcut projection's
BatchNorm on the fly, compute the spatial softmax (or sigmoid) of each ``(n, c)`` plane while it is
in cache, and write only the block output; backward folds the ReLU, merge, softmax and BatchNorm
backward into one pass per channel. They are plain C++ with a C interface, no PyTorch headers.

Building (:mod:`attnblocks.merge.build`) happens once per machine, when the first ARL block is
converted (:func:`prepare`), never inside a training step. A missing or failing compiler is one log
message, and the op runs its eager kernels (:mod:`attnblocks.merge.eager`).
"""

from __future__ import annotations

import ctypes
import threading

import torch
from torch import Tensor

from .build import BuildError, load_library, log
from .spec import NO_NORM, RUNNING_STATS, SIGMOID, SPATIAL, NormIn, NormOut

__all__ = ["available", "error", "fits", "merge_backward", "merge_forward", "prepare"]

_KERNEL_CODES = {SPATIAL: 0, SIGMOID: 1}  # the C++ kernels' codes (no channel softmax)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None
_tried = False

_P = ctypes.c_void_p
_I64, _F, _INT = ctypes.c_int64, ctypes.c_float, ctypes.c_int
_SIGNATURES = {
    "ab_abi_version": ([], _INT),
    "ab_channel_stats": ([_P, _I64, _I64, _I64, _INT, ctypes.c_double, _P, _P, _P, _INT], None),
    "ab_bn_affine": ([_P, _P, _P, _P, _I64, _P, _P], None),
    "ab_merge_fwd": (
        [_P, _P, _P, _I64, _I64, _I64, _INT, _P, _P, _P, _P, _F, _P, _INT, _INT, _INT],
        None,
    ),
    "ab_merge_bwd": (
        [_P, _P, _P, _P, _I64, _I64, _I64, _INT, _P, _P, _P, _P, _F, _P, _INT, _P, _P]
        + [_INT, _P, _P, _INT, _INT, _P, _P, _INT, _P, _P, _P, _P, _P, _INT],
        None,
    ),
}


def _load() -> ctypes.CDLL | None:
    global _lib, _error, _tried
    with _lock:
        if _tried:
            return _lib
        _tried = True
        try:
            lib = load_library()
            for name, (args, res) in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, res
            _lib = lib
        except (OSError, BuildError) as exc:
            _error = str(exc)
            log.warning(
                "attnblocks: native ARL merge kernels unavailable (%s); the merge runs its eager "
                "kernels (ATTNBLOCKS_MERGE_BACKEND=eager selects them without trying to build)",
                _error,
            )
        return _lib


def prepare() -> bool:
    """Build (once per machine) and load the kernels now; True if they are ready."""
    return _load() is not None


available = prepare


def error() -> str | None:
    """Why the kernels could not be built or loaded (None if they were, or were not tried yet)."""
    return _error


def _layout(x: Tensor) -> int | None:
    """0 for contiguous NCHW, 1 for channels_last, None for other strides."""
    if x.is_contiguous():
        return 0
    if x.is_contiguous(memory_format=torch.channels_last):
        return 1
    return None


def fits(t: Tensor, u: Tensor, code: int, tensors: tuple[Tensor | None, ...]) -> bool:
    """True if the kernels handle these inputs: CPU float32 (norm parameters too), one layout
    (contiguous NCHW or channels_last) for ``t`` and ``u``, non-empty, spatial or sigmoid."""
    if code not in _KERNEL_CODES or t.numel() == 0 or t.dim() != 4:
        return False
    layout = _layout(t)
    if layout is None or _layout(u) != layout or (layout == 1 and t.stride() != u.stride()):
        return False
    return all(
        x.device.type == "cpu" and x.dtype == torch.float32 for x in tensors if x is not None
    )


def _ptr(x: Tensor | None) -> int | None:
    return None if x is None or x.numel() == 0 else x.data_ptr()


def _nt() -> int:
    return torch.get_num_threads()


def _stats(x: Tensor, p: NormIn, layout: int) -> tuple[Tensor, Tensor]:
    """(2, C) mean and invstd of a fused norm over ``x`` (batch statistics, or running ones), and
    the (2, C) running statistics after ``nn.BatchNorm2d``'s train-mode update (else empty); rounded
    as PyTorch's CPU kernel rounds them."""
    if p.mode == NO_NORM:  # new empty tensors each time: an op's outputs may not alias
        return x.new_empty(0), x.new_empty(0)
    if p.mode == RUNNING_STATS:
        return torch.stack([p.running_mean, torch.rsqrt(p.running_var + p.eps)]), x.new_empty(0)
    n, c, h, w = x.shape
    stats, var_sum = x.new_empty(2, c), x.new_empty(c)
    _lib.ab_channel_stats(
        x.data_ptr(), n, c, h * w, layout, p.eps, stats[0].data_ptr(), var_sum.data_ptr(),
        stats[1].data_ptr(), _nt(),
    )  # fmt: skip
    if p.running_mean is None or p.running_var is None:
        return stats, x.new_empty(0)
    m, count = p.momentum, n * h * w  # mean bit-exact with PyTorch's CPU kernel, var to 1 ulp
    running = torch.stack(
        [
            stats[0] * m + p.running_mean * (1 - m),
            var_sum / (count - 1) * m + p.running_var * (1 - m),
        ]
    )
    return stats, running


def _affine(stats: Tensor, w: Tensor | None, b: Tensor | None) -> tuple[Tensor | None, ...]:
    """Per-channel ``(scale, shift)`` with ``norm(x) = fma(x, scale, shift)`` (None without a
    norm), rounded as PyTorch's CPU kernel rounds them."""
    if stats.numel() == 0:
        return None, None
    c = stats.shape[1]
    k, shift = stats.new_empty(2, c).unbind()
    _lib.ab_bn_affine(
        stats[0].data_ptr(), stats[1].data_ptr(), _ptr(w), _ptr(b), c, k.data_ptr(),
        shift.data_ptr(),
    )  # fmt: skip
    return k, shift


def _scale(scale: Tensor | None) -> Tensor | None:
    return None if scale is None else scale.reshape(-1).float().contiguous()


def merge_forward(
    t: Tensor,
    u: Tensor,
    alpha: Tensor,
    scale: Tensor | None,
    f_norm: NormIn,
    s_norm: NormIn,
    code: int,
    relu: bool,
) -> tuple[Tensor, ...]:
    """As :func:`attnblocks.merge.eager.merge_forward`, on the fused kernels (see :func:`fits`)."""
    layout = _layout(t)
    f_stats, f_running = _stats(t, f_norm, layout)
    s_stats, s_running = _stats(u, s_norm, layout)
    fk, fb = _affine(f_stats, f_norm.weight, f_norm.bias)
    sk, sb = _affine(s_stats, s_norm.weight, s_norm.bias)
    n, c, h, w = t.shape
    y = torch.empty_like(t)
    d = _scale(scale)
    _lib.ab_merge_fwd(
        t.data_ptr(), u.data_ptr(), y.data_ptr(), n, c, h * w, layout,
        _ptr(fk), _ptr(fb), _ptr(sk), _ptr(sb), float(alpha), _ptr(d),
        _KERNEL_CODES[code], int(relu), _nt(),
    )  # fmt: skip
    return y, f_stats, f_running, s_stats, s_running


def merge_backward(
    dy: Tensor,
    y: Tensor | None,
    t: Tensor,
    u: Tensor,
    alpha: Tensor,
    scale: Tensor | None,
    f_norm: NormOut,
    s_norm: NormOut,
    code: int,
    need_t: bool,
    need_u: bool,
) -> tuple[Tensor, ...]:
    """As :func:`attnblocks.merge.eager.merge_backward`, on the fused kernels."""
    layout = _layout(t)
    fk, fb = _affine(f_norm.stats, f_norm.weight, f_norm.bias)
    sk, sb = _affine(s_norm.stats, s_norm.weight, s_norm.bias)
    f_mean, f_inv = (f_norm.stats[0], f_norm.stats[1]) if f_norm.mode else (None, None)
    s_mean, s_inv = (s_norm.stats[0], s_norm.stats[1]) if s_norm.mode else (None, None)
    n, c, h, w = t.shape
    dy = dy.float().contiguous(
        memory_format=torch.channels_last if layout else torch.contiguous_format
    )
    gf, gs = torch.empty_like(t), torch.empty_like(u)
    sums = torch.empty(5, c, dtype=torch.float64)
    _lib.ab_merge_bwd(
        dy.data_ptr(), _ptr(y), t.data_ptr(), u.data_ptr(), n, c, h * w, layout,
        _ptr(fk), _ptr(fb), _ptr(sk), _ptr(sb), float(alpha), _ptr(_scale(scale)),
        _KERNEL_CODES[code], gf.data_ptr(), gs.data_ptr(),
        f_norm.mode, _ptr(f_mean), _ptr(f_inv), int(need_t),
        s_norm.mode, _ptr(s_mean), _ptr(s_inv), int(need_u),
        sums[0].data_ptr(), sums[1].data_ptr(), sums[2].data_ptr(), sums[3].data_ptr(),
        sums[4].data_ptr(), _nt(),
    )  # fmt: skip

    def empty() -> Tensor:
        return t.new_empty(0)

    d_fw = (sums[1] * f_inv).float() if f_norm.weight is not None else empty()
    d_fb = sums[0].float() if f_norm.bias is not None else empty()
    d_sw = (sums[3] * s_inv).float() if s_norm.weight is not None else empty()
    d_sb = sums[2].float() if s_norm.bias is not None else empty()
    d_alpha = sums[4].sum().to(alpha.dtype).reshape(alpha.shape)
    return gf, gs, d_alpha, d_fw, d_fb, d_sw, d_sb
