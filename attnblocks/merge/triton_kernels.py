"""The ARL merge op's CUDA backend on Triton (float32, bfloat16, float16; NCHW or channels_last).

Same arguments and results as :mod:`attnblocks.merge.eager`. This module is the host side: it picks
the memory layout and tile shapes, computes the norms' statistics and affine factors, allocates the
outputs and launches the kernels of :mod:`attnblocks.merge.triton_jit` (the device code, with a
description of each kernel), then reduces their per-channel partial sums.

Under ``TRITON_INTERPRET=1`` (set before this module is imported) the kernels run on CPU tensors,
which is how the tests check them on machines without a GPU.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from . import triton_jit as jit
from .spec import BATCH_STATS, CHANNEL, NO_NORM, RUNNING_STATS, SIGMOID, NormIn, NormOut
from .triton_jit import triton  # None when Triton is not installed

__all__ = ["available", "interpreted", "merge_backward", "merge_forward"]


def interpreted() -> bool:
    """True when Triton runs its interpreter (``TRITON_INTERPRET=1``): kernels take CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available() -> bool:
    """True if the kernels can run here: Triton is importable and a CUDA device exists (or the
    interpreter is on)."""
    return triton is not None and (torch.cuda.is_available() or interpreted())


# --- host side ---------------------------------------------------------------------------------------


def _layout(t: Tensor) -> torch.memory_format:
    channels_last = not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def _strides(x: Tensor) -> tuple[int, int, int]:
    """(n, c, position) strides of a NCHW- or channels_last-contiguous tensor."""
    sn, sc, _, sw = x.stride()
    return sn, sc, sw


def _tiles(x: Tensor, along_channels: bool) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P), about 1024 elements a tile: wide along the contiguous dimension so that
    loads coalesce, and no wider than the plane (or channel count) it walks."""
    c, hw = x.shape[1], x.shape[2] * x.shape[3]
    np2 = triton.next_power_of_2
    if x.stride(1) == 1 and c > 1:  # channels_last: channels contiguous
        bc = min(64 if along_channels else 32, np2(c))
        return bc, min(np2(hw), 1024 // bc)
    if along_channels:
        bp = min(128, np2(hw))
        return min(np2(c), 1024 // bp), bp
    bp = min(1024, np2(hw))
    return min(np2(c), 1024 // bp), bp


def _f32(x: Tensor | None, like: Tensor) -> Tensor | None:
    return None if x is None else x.to(device=like.device, dtype=torch.float32).contiguous()


def _batch_stats(x: Tensor, p: NormIn) -> tuple[Tensor, Tensor]:
    """(2, C) mean and invstd over (N, H, W), and the (2, C) running statistics after the update."""
    n, c, h, w = x.shape
    psum = torch.empty(n, c, device=x.device, dtype=torch.float32)
    pm2 = torch.empty_like(psum)
    bc, bp = _tiles(x, False)
    jit.stats[(n, triton.cdiv(c, bc))](x, psum, pm2, c, h * w, *_strides(x), bc, bp)
    hw, count = h * w, n * h * w
    mean = psum.sum(0) / count
    m2 = (pm2 + hw * (psum / hw - mean) ** 2).sum(0)  # Chan et al.'s parallel variance
    stats = torch.stack([mean, torch.rsqrt(m2 / count + p.eps)])
    if p.running_mean is None or p.running_var is None:
        return stats, x.new_empty(0, dtype=torch.float32)
    mom, unbiased = p.momentum, m2 / max(count - 1, 1)
    running = torch.stack([
        mean * mom + p.running_mean.float() * (1 - mom),
        unbiased * mom + p.running_var.float() * (1 - mom),
    ])  # fmt: skip
    return stats, running


def _norm_stats(x: Tensor, p: NormIn) -> tuple[Tensor, Tensor]:
    if p.mode == NO_NORM:
        return x.new_empty(0, dtype=torch.float32), x.new_empty(0, dtype=torch.float32)
    if p.mode == RUNNING_STATS:
        rm, rv = p.running_mean.float(), p.running_var.float()
        return torch.stack([rm, torch.rsqrt(rv + p.eps)]), x.new_empty(0, dtype=torch.float32)
    return _batch_stats(x, p)


def _affine(stats: Tensor, w: Tensor | None, b: Tensor | None) -> tuple[Tensor | None, ...]:
    if stats.numel() == 0:
        return None, None
    k = stats[1] if w is None else w.float() * stats[1]
    shift = -stats[0] * k if b is None else b.float() - stats[0] * k
    return k.contiguous(), shift.contiguous()


def _dummy(x: Tensor) -> Tensor:
    return x.new_empty(1, dtype=torch.float32)


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
    """As :func:`attnblocks.merge.eager.merge_forward`, on Triton kernels."""
    fmt = _layout(t)
    t, u = t.contiguous(memory_format=fmt), u.contiguous(memory_format=fmt)
    f_stats, f_running = _norm_stats(t, f_norm)
    s_stats, s_running = _norm_stats(u, s_norm)
    fk, fb = _affine(f_stats, f_norm.weight, f_norm.bias)
    sk, sb = _affine(s_stats, s_norm.weight, s_norm.bias)
    n, c, h, w = t.shape
    y = torch.empty_like(t, dtype=torch.promote_types(t.dtype, u.dtype), memory_format=fmt)
    d = _f32(scale.reshape(-1) if scale is not None else None, t)
    z = _dummy(t)
    args = (t, u, y, fk if fk is not None else z, fb if fb is not None else z)
    args += (sk if sk is not None else z, sb if sb is not None else z, d if d is not None else z)
    args += (_f32(alpha.reshape(1), t), c, h * w, *_strides(t))
    flags = dict(HAS_F=fk is not None, HAS_S=sk is not None, HAS_D=d is not None, RELU=relu)
    if code == CHANNEL:
        bc, bp = _tiles(t, True)
        jit.chan_fwd[(n, triton.cdiv(h * w, bp))](*args, **flags, BLOCK_C=bc, BLOCK_P=bp)
    else:
        bc, bp = _tiles(t, False)
        jit.plane_fwd[(n, triton.cdiv(c, bc))](
            *args, **flags, SIGM=code == SIGMOID, BLOCK_C=bc, BLOCK_P=bp
        )
    return y, f_stats, f_running, s_stats, s_running


def _bn_backward(g: Tensor, x: Tensor, p: NormOut, k: Tensor, s: Tensor, sx: Tensor, out: Tensor):
    n, c, h, w = x.shape
    count = n * h * w
    mean, invstd = p.stats[0], p.stats[1]
    m1 = (s / count).contiguous()
    m2 = (sx / count * invstd * invstd).contiguous()
    bc, bp = _tiles(x, False)
    grid = (n, triton.cdiv(c, bc), triton.cdiv(h * w, bp))
    jit.bn_bwd[grid](g, x, out, k, mean.contiguous(), m1, m2, c, h * w, *_strides(x), bc, bp)


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
    """As :func:`attnblocks.merge.eager.merge_backward`, on Triton kernels."""
    fmt = _layout(t)
    t, u = t.contiguous(memory_format=fmt), u.contiguous(memory_format=fmt)
    dy = dy.contiguous(memory_format=fmt)
    y = None if y is None else y.contiguous(memory_format=fmt)
    fk, fb = _affine(f_norm.stats, f_norm.weight, f_norm.bias)
    sk, sb = _affine(s_norm.stats, s_norm.weight, s_norm.bias)
    n, c, h, w = t.shape
    f_train, s_train = f_norm.mode == BATCH_STATS, s_norm.mode == BATCH_STATS
    # a second pass (the train-mode norm backward) reads dL/dF: keep it in float32 until then
    gf = torch.empty_like(t, dtype=torch.float32 if f_train else t.dtype, memory_format=fmt)
    gs = torch.empty_like(u, dtype=torch.float32 if s_train else u.dtype, memory_format=fmt)
    along_c = code == CHANNEL
    bc, bp = _tiles(t, along_c)
    rows = n * triton.cdiv(h * w, bp) if along_c else n
    partial = torch.zeros(5, rows, c, device=t.device, dtype=torch.float32)
    d = _f32(scale.reshape(-1) if scale is not None else None, t)
    z = _dummy(t)
    f_mu = f_norm.stats[0].contiguous() if f_norm.mode else z
    s_mu = s_norm.stats[0].contiguous() if s_norm.mode else z
    args = (dy, y if y is not None else z, t, u, gf, gs)
    args += (fk if fk is not None else z, fb if fb is not None else z)
    args += (sk if sk is not None else z, sb if sb is not None else z, f_mu, s_mu)
    args += (d if d is not None else z, _f32(alpha.reshape(1), t), *partial.unbind(0))
    args += (c, h * w, *_strides(t))
    flags = dict(
        HAS_F=fk is not None, HAS_S=sk is not None, F_EVAL=f_norm.mode == RUNNING_STATS,
        S_EVAL=s_norm.mode == RUNNING_STATS, HAS_D=d is not None, RELU=y is not None,
    )  # fmt: skip
    if along_c:
        jit.chan_bwd[(n, triton.cdiv(h * w, bp))](*args, **flags, BLOCK_C=bc, BLOCK_P=bp)
        d_alpha = partial[4, :, 0].sum()
    else:
        jit.plane_bwd[(n, triton.cdiv(c, bc))](
            *args, **flags, SIGM=code == SIGMOID, BLOCK_C=bc, BLOCK_P=bp
        )
        d_alpha = partial[4].sum()
    fs, fsx, ss, ssx = partial[:4].sum(1).unbind(0)
    if f_train and need_t:
        out = torch.empty_like(t, memory_format=fmt)
        _bn_backward(gf, t, f_norm, fk, fs, fsx, out)
        gf = out
    if s_train and need_u:
        out = torch.empty_like(u, memory_format=fmt)
        _bn_backward(gs, u, s_norm, sk, ss, ssx, out)
        gs = out

    def vec(v: Tensor, p: Tensor | None, times: Tensor | None = None) -> Tensor:
        if p is None:
            return t.new_empty(0, dtype=torch.float32)
        return (v if times is None else v * times).to(p.dtype)

    f_inv = f_norm.stats[1] if f_norm.mode else None
    s_inv = s_norm.stats[1] if s_norm.mode else None
    return (
        gf.to(t.dtype), gs.to(u.dtype), d_alpha.to(alpha.dtype).reshape(alpha.shape),
        vec(fsx, f_norm.weight, f_inv), vec(fs, f_norm.bias),
        vec(ssx, s_norm.weight, s_inv), vec(ss, s_norm.bias),
    )  # fmt: skip
