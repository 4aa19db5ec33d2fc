"""The ARL merge op's CUDA kernels, written in Triton (float32, bfloat16, float16; NCHW or channels_last).

Same arguments and results as :mod:`attnblocks.merge.eager`. Every kernel addresses a tensor through
its (n, c, position) strides, so NCHW and channels_last run the same code with different tile shapes
(positions contiguous: a tile spans positions; channels contiguous: a tile spans channels). Values
are loaded in their own dtype and computed in float32.

- ``_stats``: per-(n, c) sums for a BatchNorm's batch statistics (combined on the host with Chan's
  formula into the per-channel mean and variance).
- ``_plane_fwd`` / ``_plane_bwd``: spatial softmax or sigmoid; one program per (sample, block of
  channels) walks the plane: an online max and sum of exponentials, then the output (forward); the
  softmax statistics, ``r = sum(d g s A)``, then the gradients and the per-(n, c) partial sums the
  BatchNorm backward and ``dL/dalpha`` need (backward).
- ``_chan_fwd`` / ``_chan_bwd``: channel softmax; one program per (sample, block of positions) walks
  the channels.
- ``_bn_bwd``: the train-mode BatchNorm backward ``dx = k (g - mean(g) - xhat mean(g xhat))``.

Under ``TRITON_INTERPRET=1`` (set before this module is imported) the kernels run on CPU tensors,
which is how the tests check them on machines without a GPU.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .spec import BATCH_STATS, CHANNEL, NO_NORM, RUNNING_STATS, SIGMOID, NormIn, NormOut

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

__all__ = ["available", "interpreted", "merge_backward", "merge_forward"]


def interpreted() -> bool:
    """True when Triton runs its interpreter (``TRITON_INTERPRET=1``): kernels take CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available() -> bool:
    """True if the kernels can run here: Triton is importable and a CUDA device exists (or the
    interpreter is on)."""
    return triton is not None and (torch.cuda.is_available() or interpreted())


if triton is not None:

    @triton.jit
    def _stats(x, psum, pm2, C, HW, sn, sc, sp, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
        """Per (n, c): the sum over the plane and the sum of squared deviations from its mean."""
        n = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = c < C
        base = n * sn + c[:, None] * sc
        acc = tl.zeros([BLOCK_C], dtype=tl.float32)
        for p0 in range(0, HW, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            m = cm[:, None] & (p[None, :] < HW)
            acc += tl.sum(tl.load(x + base + p[None, :] * sp, mask=m, other=0.0).to(tl.float32), 1)
        mean = acc / HW
        m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
        for p0 in range(0, HW, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            m = cm[:, None] & (p[None, :] < HW)
            v = tl.load(x + base + p[None, :] * sp, mask=m, other=0.0).to(tl.float32)
            dv = tl.where(m, v - mean[:, None], 0.0)
            m2 += tl.sum(dv * dv, 1)
        tl.store(psum + n * C + c, acc, mask=cm)
        tl.store(pm2 + n * C + c, m2, mask=cm)

    @triton.jit
    def _affine_vec(k_ptr, b_ptr, c, cm, HAS: tl.constexpr):
        if HAS:
            k = tl.load(k_ptr + c, mask=cm, other=1.0)
            b = tl.load(b_ptr + c, mask=cm, other=0.0)
        else:
            k = tl.full(c.shape, 1.0, tl.float32)
            b = tl.zeros(c.shape, dtype=tl.float32)
        return k, b

    @triton.jit
    def _plane_softmax_stats(
        t, base, kf, bf, cm, HW, sp, SIGM: tl.constexpr, BLOCK_C: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        """Per row of channels: the running max of F over the plane and 1 / sum(exp(F - max))
        (one online pass; unused for the sigmoid)."""
        mx = tl.full([BLOCK_C], -float("inf"), tl.float32)
        sm = tl.zeros([BLOCK_C], dtype=tl.float32)
        if not SIGM:
            for p0 in range(0, HW, BLOCK_P):
                p = p0 + tl.arange(0, BLOCK_P)
                m = cm[:, None] & (p[None, :] < HW)
                x = tl.load(t + base + p[None, :] * sp, mask=m, other=0.0).to(tl.float32)
                f = tl.where(m, x * kf[:, None] + bf[:, None], -float("inf"))
                new = tl.maximum(mx, tl.max(f, 1))
                new = tl.where(new == -float("inf"), 0.0, new)  # an all-masked row stays finite
                sm = sm * tl.exp(mx - new) + tl.sum(tl.exp(f - new[:, None]), 1)
                mx = new
        return mx, 1.0 / tl.where(sm == 0.0, 1.0, sm)  # sm = 0 only in masked rows; NaN stays

    @triton.jit
    def _chan_softmax_stats(
        t, fk, fb, n, p, pm, C, sn, sc, sp, HAS_F: tl.constexpr, BLOCK_C: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        """Per position: the running max of F over the channels and 1 / sum(exp(F - max))."""
        mx = tl.full([BLOCK_P], -float("inf"), tl.float32)
        sm = tl.zeros([BLOCK_P], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            cm = c < C
            kf, bf = _affine_vec(fk, fb, c, cm, HAS_F)
            m = cm[:, None] & pm[None, :]
            off = n * sn + c[:, None] * sc + p[None, :] * sp
            x = tl.load(t + off, mask=m, other=0.0).to(tl.float32)
            f = tl.where(m, x * kf[:, None] + bf[:, None], -float("inf"))
            new = tl.maximum(mx, tl.max(f, 0))
            new = tl.where(new == -float("inf"), 0.0, new)
            sm = sm * tl.exp(mx - new) + tl.sum(tl.exp(f - new[None, :]), 0)
            mx = new
        return mx, 1.0 / tl.where(sm == 0.0, 1.0, sm)

    @triton.jit
    def _plane_fwd(
        t, u, y, fk, fb, sk, sb, dscale, alpha_ptr, C, HW, sn, sc, sp,
        HAS_F: tl.constexpr, HAS_S: tl.constexpr, HAS_D: tl.constexpr, SIGM: tl.constexpr,
        RELU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        n = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = c < C
        kf, bf = _affine_vec(fk, fb, c, cm, HAS_F)
        ks, bs = _affine_vec(sk, sb, c, cm, HAS_S)
        alpha = tl.load(alpha_ptr).to(tl.float32)
        d = tl.load(dscale + n).to(tl.float32) if HAS_D else 1.0
        base = n * sn + c[:, None] * sc
        mx, inv = _plane_softmax_stats(t, base, kf, bf, cm, HW, sp, SIGM, BLOCK_C, BLOCK_P)
        for p0 in range(0, HW, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            m = cm[:, None] & (p[None, :] < HW)
            off = base + p[None, :] * sp
            f = tl.load(t + off, mask=m, other=0.0).to(tl.float32) * kf[:, None] + bf[:, None]
            s = tl.load(u + off, mask=m, other=0.0).to(tl.float32) * ks[:, None] + bs[:, None]
            if SIGM:
                a = tl.sigmoid(f)
            else:
                a = tl.exp(f - mx[:, None]) * inv[:, None]
            z = s + d * (f + alpha * a * s)
            if RELU:
                z = tl.maximum(z, 0.0)
            tl.store(y + off, z, mask=m)

    @triton.jit
    def _plane_bwd(
        dy, y, t, u, gf, gs, fk, fb, sk, sb, fmu, smu, dscale, alpha_ptr,
        p_fs, p_fsx, p_ss, p_ssx, p_r, C, HW, sn, sc, sp,
        HAS_F: tl.constexpr, HAS_S: tl.constexpr, F_EVAL: tl.constexpr, S_EVAL: tl.constexpr,
        HAS_D: tl.constexpr, SIGM: tl.constexpr, RELU: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        n = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = c < C
        kf, bf = _affine_vec(fk, fb, c, cm, HAS_F)
        ks, bs = _affine_vec(sk, sb, c, cm, HAS_S)
        f_mu = tl.load(fmu + c, mask=cm, other=0.0) if HAS_F else tl.zeros([BLOCK_C], tl.float32)
        s_mu = tl.load(smu + c, mask=cm, other=0.0) if HAS_S else tl.zeros([BLOCK_C], tl.float32)
        alpha = tl.load(alpha_ptr).to(tl.float32)
        d = tl.load(dscale + n).to(tl.float32) if HAS_D else 1.0
        base = n * sn + c[:, None] * sc
        mx, inv = _plane_softmax_stats(t, base, kf, bf, cm, HW, sp, SIGM, BLOCK_C, BLOCK_P)
        r = tl.zeros([BLOCK_C], dtype=tl.float32)  # sum over the plane of d * g * s * A
        for p0 in range(0, HW, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            m = cm[:, None] & (p[None, :] < HW)
            off = base + p[None, :] * sp
            g = tl.load(dy + off, mask=m, other=0.0).to(tl.float32)
            if RELU:
                g = tl.where(tl.load(y + off, mask=m, other=0.0).to(tl.float32) > 0.0, g, 0.0)
            f = tl.load(t + off, mask=m, other=0.0).to(tl.float32) * kf[:, None] + bf[:, None]
            s = tl.load(u + off, mask=m, other=0.0).to(tl.float32) * ks[:, None] + bs[:, None]
            a = tl.sigmoid(f) if SIGM else tl.exp(f - mx[:, None]) * inv[:, None]
            r += tl.sum(tl.where(m, d * g * s * a, 0.0), 1)
        fs = tl.zeros([BLOCK_C], dtype=tl.float32)
        fsx = tl.zeros([BLOCK_C], dtype=tl.float32)
        ss = tl.zeros([BLOCK_C], dtype=tl.float32)
        ssx = tl.zeros([BLOCK_C], dtype=tl.float32)
        for p0 in range(0, HW, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            m = cm[:, None] & (p[None, :] < HW)
            off = base + p[None, :] * sp
            g = tl.load(dy + off, mask=m, other=0.0).to(tl.float32)
            if RELU:
                g = tl.where(tl.load(y + off, mask=m, other=0.0).to(tl.float32) > 0.0, g, 0.0)
            tv = tl.load(t + off, mask=m, other=0.0).to(tl.float32)
            uv = tl.load(u + off, mask=m, other=0.0).to(tl.float32)
            f = tv * kf[:, None] + bf[:, None]
            s = uv * ks[:, None] + bs[:, None]
            gb = d * g
            if SIGM:
                a = tl.sigmoid(f)
                df = gb + alpha * gb * s * a * (1.0 - a)
            else:
                a = tl.exp(f - mx[:, None]) * inv[:, None]
                df = gb + alpha * a * (gb * s - r[:, None])
            ds = g + alpha * gb * a
            df = tl.where(m, df, 0.0)
            ds = tl.where(m, ds, 0.0)
            fs += tl.sum(df, 1)
            fsx += tl.sum(df * (tv - f_mu[:, None]), 1)
            ss += tl.sum(ds, 1)
            ssx += tl.sum(ds * (uv - s_mu[:, None]), 1)
            tl.store(gf + off, df * kf[:, None] if F_EVAL else df, mask=m)
            tl.store(gs + off, ds * ks[:, None] if S_EVAL else ds, mask=m)
        tl.store(p_fs + n * C + c, fs, mask=cm)
        tl.store(p_fsx + n * C + c, fsx, mask=cm)
        tl.store(p_ss + n * C + c, ss, mask=cm)
        tl.store(p_ssx + n * C + c, ssx, mask=cm)
        tl.store(p_r + n * C + c, r, mask=cm)

    @triton.jit
    def _chan_fwd(
        t, u, y, fk, fb, sk, sb, dscale, alpha_ptr, C, HW, sn, sc, sp,
        HAS_F: tl.constexpr, HAS_S: tl.constexpr, HAS_D: tl.constexpr, RELU: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        n = tl.program_id(0)
        p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        pm = p < HW
        alpha = tl.load(alpha_ptr).to(tl.float32)
        d = tl.load(dscale + n).to(tl.float32) if HAS_D else 1.0
        mx, inv = _chan_softmax_stats(t, fk, fb, n, p, pm, C, sn, sc, sp, HAS_F, BLOCK_C, BLOCK_P)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            cm = c < C
            kf, bf = _affine_vec(fk, fb, c, cm, HAS_F)
            ks, bs = _affine_vec(sk, sb, c, cm, HAS_S)
            m = cm[:, None] & pm[None, :]
            off = n * sn + c[:, None] * sc + p[None, :] * sp
            f = tl.load(t + off, mask=m, other=0.0).to(tl.float32) * kf[:, None] + bf[:, None]
            s = tl.load(u + off, mask=m, other=0.0).to(tl.float32) * ks[:, None] + bs[:, None]
            a = tl.exp(f - mx[None, :]) * inv[None, :]
            z = s + d * (f + alpha * a * s)
            if RELU:
                z = tl.maximum(z, 0.0)
            tl.store(y + off, z, mask=m)

    @triton.jit
    def _chan_bwd(
        dy, y, t, u, gf, gs, fk, fb, sk, sb, fmu, smu, dscale, alpha_ptr,
        p_fs, p_fsx, p_ss, p_ssx, p_r, C, HW, sn, sc, sp,
        HAS_F: tl.constexpr, HAS_S: tl.constexpr, F_EVAL: tl.constexpr, S_EVAL: tl.constexpr,
        HAS_D: tl.constexpr, RELU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        """Partial sums per (program, channel): row ``n * num_pid_1 + pid_1`` of the buffers."""
        n = tl.program_id(0)
        row = n * tl.num_programs(1) + tl.program_id(1)
        p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        pm = p < HW
        alpha = tl.load(alpha_ptr).to(tl.float32)
        d = tl.load(dscale + n).to(tl.float32) if HAS_D else 1.0
        mx, inv = _chan_softmax_stats(t, fk, fb, n, p, pm, C, sn, sc, sp, HAS_F, BLOCK_C, BLOCK_P)
        r = tl.zeros([BLOCK_P], dtype=tl.float32)  # per position: sum over channels of d g s A
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            cm = c < C
            kf, bf = _affine_vec(fk, fb, c, cm, HAS_F)
            ks, bs = _affine_vec(sk, sb, c, cm, HAS_S)
            m = cm[:, None] & pm[None, :]
            off = n * sn + c[:, None] * sc + p[None, :] * sp
            g = tl.load(dy + off, mask=m, other=0.0).to(tl.float32)
            if RELU:
                g = tl.where(tl.load(y + off, mask=m, other=0.0).to(tl.float32) > 0.0, g, 0.0)
            f = tl.load(t + off, mask=m, other=0.0).to(tl.float32) * kf[:, None] + bf[:, None]
            s = tl.load(u + off, mask=m, other=0.0).to(tl.float32) * ks[:, None] + bs[:, None]
            a = tl.exp(f - mx[None, :]) * inv[None, :]
            r += tl.sum(tl.where(m, d * g * s * a, 0.0), 0)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            cm = c < C
            kf, bf = _affine_vec(fk, fb, c, cm, HAS_F)
            ks, bs = _affine_vec(sk, sb, c, cm, HAS_S)
            f_mu = (
                tl.load(fmu + c, mask=cm, other=0.0) if HAS_F else tl.zeros([BLOCK_C], tl.float32)
            )
            s_mu = (
                tl.load(smu + c, mask=cm, other=0.0) if HAS_S else tl.zeros([BLOCK_C], tl.float32)
            )
            m = cm[:, None] & pm[None, :]
            off = n * sn + c[:, None] * sc + p[None, :] * sp
            g = tl.load(dy + off, mask=m, other=0.0).to(tl.float32)
            if RELU:
                g = tl.where(tl.load(y + off, mask=m, other=0.0).to(tl.float32) > 0.0, g, 0.0)
            tv = tl.load(t + off, mask=m, other=0.0).to(tl.float32)
            uv = tl.load(u + off, mask=m, other=0.0).to(tl.float32)
            f = tv * kf[:, None] + bf[:, None]
            s = uv * ks[:, None] + bs[:, None]
            gb = d * g
            a = tl.exp(f - mx[None, :]) * inv[None, :]
            df = tl.where(m, gb + alpha * a * (gb * s - r[None, :]), 0.0)
            ds = tl.where(m, g + alpha * gb * a, 0.0)
            tl.store(p_fs + row * C + c, tl.sum(df, 1), mask=cm)
            tl.store(p_fsx + row * C + c, tl.sum(df * (tv - f_mu[:, None]), 1), mask=cm)
            tl.store(p_ss + row * C + c, tl.sum(ds, 1), mask=cm)
            tl.store(p_ssx + row * C + c, tl.sum(ds * (uv - s_mu[:, None]), 1), mask=cm)
            tl.store(gf + off, df * kf[:, None] if F_EVAL else df, mask=m)
            tl.store(gs + off, ds * ks[:, None] if S_EVAL else ds, mask=m)
        tl.store(p_r + row * C + tl.arange(0, 1), tl.sum(r, 0) + tl.zeros([1], tl.float32))

    @triton.jit
    def _bn_bwd(
        g, x, out, k_ptr, mu_ptr, m1_ptr, m2_ptr, C, HW, sn, sc, sp,
        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        """``out = k * (g - m1 - (x - mu) * m2)`` per channel (the train-mode BatchNorm backward)."""
        n = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
        cm = c < C
        m = cm[:, None] & (p[None, :] < HW)
        off = n * sn + c[:, None] * sc + p[None, :] * sp
        k = tl.load(k_ptr + c, mask=cm, other=0.0)
        mu = tl.load(mu_ptr + c, mask=cm, other=0.0)
        m1 = tl.load(m1_ptr + c, mask=cm, other=0.0)
        m2 = tl.load(m2_ptr + c, mask=cm, other=0.0)
        gv = tl.load(g + off, mask=m, other=0.0).to(tl.float32)
        xv = tl.load(x + off, mask=m, other=0.0).to(tl.float32)
        res = k[:, None] * (gv - m1[:, None] - (xv - mu[:, None]) * m2[:, None])
        tl.store(out + off, res, mask=m)


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
    _stats[(n, triton.cdiv(c, bc))](x, psum, pm2, c, h * w, *_strides(x), bc, bp)
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
        _chan_fwd[(n, triton.cdiv(h * w, bp))](*args, **flags, BLOCK_C=bc, BLOCK_P=bp)
    else:
        bc, bp = _tiles(t, False)
        _plane_fwd[(n, triton.cdiv(c, bc))](
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
    _bn_bwd[grid](g, x, out, k, mean.contiguous(), m1, m2, c, h * w, *_strides(x), bc, bp)


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
        _chan_bwd[(n, triton.cdiv(h * w, bp))](*args, **flags, BLOCK_C=bc, BLOCK_P=bp)
        d_alpha = partial[4, :, 0].sum()
    else:
        _plane_bwd[(n, triton.cdiv(c, bc))](
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
