"""The ARL merge op in plain PyTorch: runs on any device and dtype (computes in float32 or wider).

The op's ``eager`` kernels, and its fallback wherever the fused kernels do not apply. Same
arguments as the fused kernels (:mod:`attnblocks.merge.native`, :mod:`attnblocks.merge.triton_kernels`):
the fused norms arrive as :class:`~attnblocks.merge.spec.NormIn` / :class:`~attnblocks.merge.spec.NormOut`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .spec import CHANNEL, SIGMOID, SPATIAL, NormIn, NormOut, up

__all__ = ["merge_backward", "merge_forward"]


def _normalize(f: Tensor, code: int) -> Tensor:
    if code == SPATIAL:
        return torch.softmax(f.flatten(2), dim=-1).view_as(f)
    if code == CHANNEL:
        return torch.softmax(f, dim=1)
    if code == SIGMOID:
        return torch.sigmoid(f)
    raise ValueError(f"unknown normalization code {code}")


def _vjp(a: Tensor, ga: Tensor, code: int) -> Tensor:
    """Gradient wrt the normalization's input, given ``ga * a`` (the grad wrt the mask times it)."""
    if code == SPATIAL:
        return ga - a * ga.sum(dim=(2, 3), keepdim=True)
    if code == CHANNEL:
        return ga - a * ga.sum(dim=1, keepdim=True)
    return ga * (1.0 - a)


def _norm_forward(x: Tensor, p: NormIn) -> tuple[Tensor, Tensor, Tensor]:
    """``(norm(x), stats, running)`` in float32: ``stats`` = (2, C) mean and invstd the norm used,
    ``running`` = (2, C) running mean and variance after the update ``nn.BatchNorm2d`` makes in train
    mode (computed by its own kernel, on copies); empty tensors where there is none."""

    def empty() -> Tensor:  # a new one each time: an op's outputs may not alias one another
        return x.new_empty(0, dtype=torch.promote_types(x.dtype, torch.float32))

    if p.mode == 0:
        return up(x), empty(), empty()
    train = p.mode == 2
    keep = train and p.running_mean is not None and p.running_var is not None
    rm, rv = (p.running_mean.clone(), p.running_var.clone()) if keep else (None, None)
    out, mean, invstd = torch.ops.aten.native_batch_norm(
        x, p.weight, p.bias, rm if train else p.running_mean, rv if train else p.running_var,
        train, p.momentum, p.eps,
    )  # fmt: skip
    if not train:
        mean, invstd = up(p.running_mean), torch.rsqrt(up(p.running_var) + p.eps)
    dtype = torch.promote_types(x.dtype, torch.float32)
    running = torch.stack([rm, rv]).to(dtype) if keep else empty()
    return up(out), torch.stack([mean, invstd]).to(dtype), running


def _affine(x: Tensor, p: NormOut) -> Tensor:
    """The norm's output recomputed from its input and the statistics it used (float32)."""
    if p.mode == 0:
        return up(x)
    mean, invstd = p.stats[0], p.stats[1]
    k = invstd if p.weight is None else up(p.weight) * invstd
    shift = -mean * k if p.bias is None else up(p.bias) - mean * k
    return torch.addcmul(shift.view(1, -1, 1, 1), up(x), k.view(1, -1, 1, 1))


def _norm_backward(
    grad: Tensor, x: Tensor, p: NormOut, need_x: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dweight, dbias)`` of the norm (dx in x's dtype; empty grads where not needed)."""

    def empty() -> Tensor:
        return grad.new_empty(0)

    if p.mode == 0:
        return grad.to(x.dtype), empty(), empty()
    mask = [need_x, p.weight is not None, p.bias is not None]
    mean, invstd = p.stats[0], p.stats[1]
    if p.mode == 2:
        if x.device.type == "cpu":  # PyTorch's CPU kernel keeps the statistics in the params' dtype
            sdt = x.dtype if p.weight is None else p.weight.dtype
            mean, invstd = mean.to(sdt), invstd.to(sdt)
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(
            grad.to(x.dtype), x, p.weight, None, None, mean, invstd, True, 0.0, mask
        )
    else:  # fixed statistics: a per-channel affine map
        xhat = (up(x) - mean.view(1, -1, 1, 1)) * invstd.view(1, -1, 1, 1)
        k = invstd if p.weight is None else up(p.weight) * invstd
        dx = (grad * k.view(1, -1, 1, 1)).to(x.dtype) if need_x else None
        dw = (grad * xhat).sum(dim=(0, 2, 3)) if mask[1] else None
        db = grad.sum(dim=(0, 2, 3)) if mask[2] else None
    return (
        dx if dx is not None else empty(),
        dw.to(p.weight.dtype) if dw is not None else empty(),
        db.to(p.bias.dtype) if db is not None else empty(),
    )


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
    """``(y, f_stats, f_running, s_stats, s_running)``: ``y = act(s + d * (F + alpha * N(F) * s))``
    with ``F = f_norm(t)``, ``s = s_norm(u)``, in ``promote(t, u)``; per norm, the (2, C) float32
    statistics it used and its updated running statistics (see :func:`_norm_forward`)."""
    with torch.autocast(t.device.type, enabled=False):
        return _forward(t, u, alpha, scale, f_norm, s_norm, code, relu)


def _forward(t, u, alpha, scale, f_norm, s_norm, code, relu):  # noqa: ANN001, ANN202
    f, f_stats, f_running = _norm_forward(t, f_norm)
    s, s_stats, s_running = _norm_forward(u, s_norm)
    z = torch.addcmul(f, _normalize(f, code) * up(alpha), s)
    if scale is not None:
        z = z * up(scale)
    z = z + s
    y = torch.relu(z) if relu else z
    return y.to(torch.promote_types(t.dtype, u.dtype)), f_stats, f_running, s_stats, s_running


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
    """``(d_t, d_u, d_alpha, d_f_weight, d_f_bias, d_s_weight, d_s_bias)``; ``F``, ``s`` and
    ``N(F)`` recomputed from ``t``, ``u`` and the saved statistics (empty where not needed)."""
    with torch.autocast(t.device.type, enabled=False):
        return _backward(dy, y, t, u, alpha, scale, f_norm, s_norm, code, need_t, need_u)


def _backward(dy, y, t, u, alpha, scale, f_norm, s_norm, code, need_t, need_u):  # noqa: ANN001, ANN202
    g = up(dy)
    if y is not None:  # ReLU: y > 0 exactly where z > 0
        g = torch.ops.aten.threshold_backward(g, y, 0)
    f = _affine(t, f_norm)
    s = _affine(u, s_norm)
    a = _normalize(f, code)
    al = up(alpha)
    gb = g if scale is None else g * up(scale)  # gradient wrt the branch F + alpha * A * s
    gsa = gb * s * a
    d_alpha = gsa.sum().reshape(alpha.shape).to(alpha.dtype)
    d_f = gb + al * _vjp(a, gsa, code)
    d_s = g + al * gb * a
    d_t, d_fw, d_fb = _norm_backward(d_f, t, f_norm, need_t)
    d_u, d_sw, d_sb = _norm_backward(d_s, u, s_norm, need_u)
    return d_t, d_u, d_alpha, d_fw, d_fb, d_sw, d_sb
