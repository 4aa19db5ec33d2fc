"""The ARL merge op's Triton kernels: the device code (``@triton.jit``) that
:mod:`attnblocks.merge.triton_kernels` launches.

Every kernel addresses a tensor through its (n, c, position) strides, so NCHW and channels_last run
the same code with different tile shapes (positions contiguous: a tile spans positions; channels
contiguous: a tile spans channels). Values are loaded in their own dtype and computed in float32.

- ``stats``: per-(n, c) sums for a BatchNorm's batch statistics (combined on the host with Chan's
  formula into the per-channel mean and variance).
- ``plane_fwd`` / ``plane_bwd``: spatial softmax or sigmoid; one program per (sample, block of
  channels) walks the plane: an online max and sum of exponentials, then the output (forward); the
  softmax statistics, ``r = sum(d g s A)``, then the gradients and the per-(n, c) partial sums the
  BatchNorm backward and ``dL/dalpha`` need (backward).
- ``chan_fwd`` / ``chan_bwd``: channel softmax; one program per (sample, block of positions) walks
  the channels.
- ``bn_bwd``: the train-mode BatchNorm backward ``dx = k (g - mean(g) - xhat mean(g xhat))``.

``@triton.jit`` reads ``TRITON_INTERPRET`` when this module is imported: with ``TRITON_INTERPRET=1``
set before, the kernels run on CPU tensors (how the tests check them without a GPU). Nothing is
defined when Triton is not installed.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None


if triton is not None:

    @triton.jit
    def stats(x, psum, pm2, C, HW, sn, sc, sp, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
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
    def plane_fwd(
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
    def plane_bwd(
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
    def chan_fwd(
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
    def chan_bwd(
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
    def bn_bwd(
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
