"""The lean ARL merge as one custom autograd op, with the block's BatchNorms folded in.

:class:`_ARLMerge` runs the element-wise kernels of a backend (:mod:`attnblocks._merge_kernels`);
:mod:`attnblocks._merge_native` has the fused C++ counterpart. See :mod:`attnblocks.merge`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._merge_kernels import _Kernels, _NormSpec, _up

# --- the custom autograd op -----------------------------------------------------------------------


@dataclass(frozen=True)
class _BN:
    """How a fused ``BatchNorm2d`` runs: batch statistics or running ones, momentum and eps."""

    train: bool
    momentum: float
    eps: float


@dataclass(frozen=True)
class _Config:
    spec: _NormSpec
    relu: bool
    kernels: _Kernels
    f_norm: _BN | None  # fused norm of the branch: F = bn(t)
    s_norm: _BN | None  # fused norm of the shortcut projection: s = bn(u)
    out_dtype: torch.dtype


def _bn_forward(x: Tensor, p: tuple[Tensor | None, ...], bn: _BN) -> tuple[Tensor, Tensor, Tensor]:
    """``(bn(x), mean, invstd)``; running statistics updated in place as ``nn.BatchNorm2d`` does."""
    w, b, rm, rv = p
    out, mean, invstd = torch.ops.aten.native_batch_norm(
        x, w, b, rm, rv, bn.train, bn.momentum, bn.eps
    )
    if not bn.train:
        mean, invstd = _up(rm), torch.rsqrt(_up(rv) + bn.eps)
    return out, mean, invstd


def _bn_running(p: tuple[Tensor | None, ...], bn: _BN) -> tuple[Tensor, Tensor]:
    """``(mean, invstd)`` of the running statistics (eval mode)."""
    return _up(p[2]), torch.rsqrt(_up(p[3]) + bn.eps)


def _bn_affine(p: tuple[Tensor | None, ...], mean: Tensor, invstd: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel ``(scale, shift)`` with ``bn(x) = x * scale + shift`` for the given statistics."""
    w, b = p[0], p[1]
    k = invstd if w is None else _up(w) * invstd
    shift = -_up(mean) * k if b is None else _up(b) - _up(mean) * k
    return k.reshape(1, -1, 1, 1), shift.reshape(1, -1, 1, 1)


def _bn_backward(
    grad: Tensor,
    x: Tensor,
    p: tuple[Tensor | None, ...],
    mean: Tensor,
    invstd: Tensor,
    bn: _BN,
    need_x: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    w, b, rm, rv = p
    mask = [need_x, w is not None, b is not None]
    return torch.ops.aten.native_batch_norm_backward(
        grad.to(x.dtype), x, w, rm, rv, mean, invstd, bn.train, bn.eps, mask
    )


class _ARLMerge(torch.autograd.Function):
    """``y = act(s + d * (F + alpha * N(F) * s))``, ``F = bn(t)`` or ``t``, ``s = bn(u)`` or ``u``.

    Saved for backward: ``t`` and ``u`` (the norms' inputs, which plain norm layers save too), ``y``
    (ReLU only; the next layer's input anyway), the per-channel statistics and the scalars. ``F``,
    ``s`` and ``N(F)`` are recomputed in backward.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        t: Tensor,
        u: Tensor,
        alpha: Tensor,
        scale: Tensor | None,
        cfg: _Config,
        fw: Tensor | None,
        fb: Tensor | None,
        frm: Tensor | None,
        frv: Tensor | None,
        sw: Tensor | None,
        sb: Tensor | None,
        srm: Tensor | None,
        srv: Tensor | None,
    ) -> Tensor:
        none = (None, None)
        fp, sp = (fw, fb, frm, frv), (sw, sb, srm, srv)
        with torch.autocast(t.device.type, enabled=False):
            # train mode: batch statistics, F materialised by the native kernel (which updates
            # the running statistics); eval mode: the norm is a per-channel affine map applied
            # inside the merge kernel
            f, s, f_aff, s_aff = t, u, None, None
            f_stats = s_stats = none
            fuse = cfg.kernels.fuse_eval_norm
            if cfg.f_norm and (cfg.f_norm.train or not fuse):
                f, *f_stats = _bn_forward(t, fp, cfg.f_norm)
            elif cfg.f_norm:
                f_stats = _bn_running(fp, cfg.f_norm)
                f_aff = _bn_affine(fp, *f_stats)
            if cfg.s_norm and (cfg.s_norm.train or not fuse):
                s, *s_stats = _bn_forward(u, sp, cfg.s_norm)
            elif cfg.s_norm:
                s_stats = _bn_running(sp, cfg.s_norm)
                s_aff = _bn_affine(sp, *s_stats)
            owned = cfg.f_norm is not None
            y = cfg.kernels.fwd(f, f_aff, s, s_aff, alpha, scale, cfg.spec, cfg.relu, owned)
            y = y.to(cfg.out_dtype)
        ctx.cfg = cfg
        # Running statistics are read by backward only in eval mode.
        f_run = (frm, frv) if cfg.f_norm and not cfg.f_norm.train else none
        s_run = (srm, srv) if cfg.s_norm and not cfg.s_norm.train else none
        ctx.save_for_backward(
            t, u, alpha, scale, y if cfg.relu else None,
            fw, fb, *f_run, *f_stats, sw, sb, *s_run, *s_stats,
        )  # fmt: skip
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        cfg: _Config = ctx.cfg
        t, u, alpha, scale, y, *rest = ctx.saved_tensors
        fp, f_stats, sp, s_stats = rest[0:4], rest[4:6], rest[6:10], rest[10:12]
        with torch.autocast(t.device.type, enabled=False):
            f_aff = _bn_affine(fp, *f_stats) if cfg.f_norm else None
            s_aff = _bn_affine(sp, *s_stats) if cfg.s_norm else None
            d_f, d_s, d_alpha = cfg.kernels.bwd(dy, y, t, u, f_aff, s_aff, alpha, scale, cfg.spec)
            d_fw = d_fb = d_sw = d_sb = None
            if cfg.f_norm:
                d_t, d_fw, d_fb = _bn_backward(
                    d_f, t, fp, *f_stats, cfg.f_norm, ctx.needs_input_grad[0]
                )
            else:
                d_t = d_f.to(t.dtype)
            if cfg.s_norm:
                d_u, d_sw, d_sb = _bn_backward(
                    d_s, u, sp, *s_stats, cfg.s_norm, ctx.needs_input_grad[1]
                )
            else:
                d_u = d_s.to(u.dtype)
        d_alpha = d_alpha.to(alpha.dtype).reshape(alpha.shape)
        return d_t, d_u, d_alpha, None, None, d_fw, d_fb, None, None, d_sw, d_sb, None, None
