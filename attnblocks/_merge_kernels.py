"""Element-wise kernels of the lean ARL merge, and the normalizations' vector-Jacobian products.

The ``eager`` backend runs :func:`_merge_fwd_eager` / :func:`_merge_bwd_eager` (pure PyTorch, in
place in fresh buffers); the ``compiled`` backend runs the functional :func:`_merge_fwd_kernel` /
:func:`_merge_bwd_kernel` through ``torch.compile``. See :mod:`attnblocks.merge`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .normalize import channel_softmax, get_normalization, sigmoid_attention, spatial_softmax

# --- attention normalizations and their vector-Jacobian products (float32 in, float32 out) ---------


def _spatial(f: Tensor) -> Tensor:
    n, c, h, w = f.shape
    return torch.softmax(f.reshape(n, c, h * w), dim=-1).reshape(n, c, h, w)


def _spatial_vjp_(a: Tensor, ga: Tensor) -> Tensor:
    return ga.addcmul_(a, ga.sum(dim=(2, 3), keepdim=True), value=-1.0)


def _channel(f: Tensor) -> Tensor:
    return torch.softmax(f, dim=1)


def _channel_vjp_(a: Tensor, ga: Tensor) -> Tensor:
    return ga.addcmul_(a, ga.sum(dim=1, keepdim=True), value=-1.0)


def _sigmoid_vjp_(a: Tensor, ga: Tensor) -> Tensor:
    return ga.addcmul_(ga, a, value=-1.0)  # ga * (1 - a)


def _spatial_vjp_sum_(a: Tensor, ga: Tensor) -> tuple[Tensor, Tensor]:
    r = ga.sum(dim=(2, 3), keepdim=True)
    return ga.addcmul_(a, r, value=-1.0), r.sum()


def _channel_vjp_sum_(a: Tensor, ga: Tensor) -> tuple[Tensor, Tensor]:
    r = ga.sum(dim=1, keepdim=True)
    return ga.addcmul_(a, r, value=-1.0), r.sum()


def _sigmoid_vjp_sum_(a: Tensor, ga: Tensor) -> tuple[Tensor, Tensor]:
    total = ga.sum()
    return ga.addcmul_(ga, a, value=-1.0), total


@dataclass(frozen=True)
class _NormSpec:
    forward: Callable[[Tensor], Tensor]
    # (A, g * A) -> grad wrt the input for the grad g wrt the mask A, computed in place in the
    # buffer g * A; None: autograd through a recomputed mask (custom normalizations)
    vjp_: Callable[[Tensor, Tensor], Tensor] | None
    # the same, also returning sum(g * A), taken from the partial sums the vjp needs anyway
    vjp_sum_: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None


# Closed forms of the built-in normalizations, keyed by the public function objects.
_CLOSED_FORMS: dict[Callable[[Tensor], Tensor], _NormSpec] = {
    spatial_softmax: _NormSpec(_spatial, _spatial_vjp_, _spatial_vjp_sum_),
    channel_softmax: _NormSpec(_channel, _channel_vjp_, _channel_vjp_sum_),
    sigmoid_attention: _NormSpec(torch.sigmoid, _sigmoid_vjp_, _sigmoid_vjp_sum_),
}


def _norm_spec(normalization: str | Callable[[Tensor], Tensor]) -> _NormSpec:
    fn = get_normalization(normalization)
    return _CLOSED_FORMS.get(fn) or _NormSpec(fn, None)


def _mask_vjp(spec: _NormSpec, f: Tensor, g: Tensor) -> Tensor:
    """Gradient wrt ``f`` of ``sum(g * N(f))`` for a custom normalization, by autograd."""
    with torch.enable_grad():
        fr = f.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(spec.forward(fr), fr, g)
    return grad


# --- element-wise kernels (pure functions; the "compiled" backend runs them through torch.compile) --


def _up(x: Tensor) -> Tensor:
    """``x`` in its compute dtype: float32, or float64 for float64 input."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _affine(x: Tensor, affine: tuple[Tensor, Tensor] | None) -> Tensor:
    """``x`` in float32, through a per-channel ``(scale, shift)`` map (a recomputed norm) if given."""
    return _up(x) if affine is None else torch.addcmul(affine[1], _up(x), affine[0])


def _merge_fwd_kernel(
    f: Tensor,
    f_affine: tuple[Tensor, Tensor] | None,
    s: Tensor,
    s_affine: tuple[Tensor, Tensor] | None,
    alpha: Tensor,
    scale: Tensor | None,
    spec: _NormSpec,
    relu: bool,
    owned: bool,
) -> Tensor:
    """``act(s + scale * (F + alpha * N(F) * s))`` (``act`` = ReLU or identity), in float32.

    ``F = f * f_scale + f_shift`` and ``s = s * s_scale + s_shift`` when the affine pairs are given
    (an eval-mode BatchNorm applied on the fly). The functional form that ``torch.compile`` fuses.
    """
    f32 = _affine(f, f_affine)
    s32 = _affine(s, s_affine)
    z = f32 + spec.forward(f32) * _up(alpha) * s32
    if scale is not None:
        z = z * _up(scale)
    z = z + s32
    return torch.relu(z) if relu else z


def _merge_fwd_eager(
    f: Tensor,
    f_affine: tuple[Tensor, Tensor] | None,
    s: Tensor,
    s_affine: tuple[Tensor, Tensor] | None,
    alpha: Tensor,
    scale: Tensor | None,
    spec: _NormSpec,
    relu: bool,
    owned: bool,
) -> Tensor:
    """:func:`_merge_fwd_kernel` in place: on CPU a new full-size temporary costs as much as a pass.

    ``owned``: ``f`` is a temporary of the op (a BatchNorm output) that may be overwritten.
    """
    f32 = _affine(f, f_affine)
    s32 = _affine(s, s_affine)
    a = spec.forward(f32)
    in_place = spec.vjp_ is not None and (owned or f32 is not f)  # the mask does not alias F
    if in_place and a.device.type == "cpu":  # the scalar is free to read on CPU
        z = f32.addcmul_(a, s32, value=float(alpha))
    else:
        z = (a.clone() if spec.vjp_ is None else a).mul_(_up(alpha)).mul_(s32).add_(f32)
    if scale is not None:
        z.mul_(_up(scale))
    z.add_(s32)
    return z.relu_() if relu else z


def _merge_bwd_kernel(
    dy: Tensor,
    y: Tensor | None,
    t: Tensor,
    u: Tensor,
    f_affine: tuple[Tensor, Tensor] | None,
    s_affine: tuple[Tensor, Tensor] | None,
    alpha: Tensor,
    scale: Tensor | None,
    spec: _NormSpec,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients wrt ``F``, ``s`` and ``alpha``.

    ``F = t * f_scale + f_shift`` and ``s = u * s_scale + s_shift`` are recomputed (identity when the
    affine pair is None), and ``N(F)`` with them. Four full-size buffers: ``g``, ``F``, ``A`` and
    ``g * s * A``; the gradients are formed in place in the last two.
    """
    g = _up(dy)
    if y is not None:  # ReLU: y > 0 exactly where z > 0
        g = torch.ops.aten.threshold_backward(g, y, 0)
    f = _affine(t, f_affine)
    s32 = _affine(u, s_affine)
    a = spec.forward(f)
    if spec.vjp_ is None:  # a custom normalization may return a view of its input
        a = a.clone()
    al = _up(alpha)
    gb = g if scale is None else g * _up(scale)  # gradient wrt the branch F + alpha * A * s
    gsa = gb * s32  # gradient wrt (alpha * A), then times A
    d_f_mask = _mask_vjp(spec, f, gsa * al) if spec.vjp_ is None else None
    gsa.mul_(a)
    d_alpha = gsa.sum()
    if d_f_mask is None:
        d_f = spec.vjp_(a, gsa).mul_(al).add_(gb)
    else:
        d_f = d_f_mask.add_(gb)
    d_s = a.mul_(gb).mul_(al).add_(g)  # g + alpha * gb * A
    return d_f, d_s, d_alpha


def _merge_bwd_eager(
    dy: Tensor,
    y: Tensor | None,
    t: Tensor,
    u: Tensor,
    f_affine: tuple[Tensor, Tensor] | None,
    s_affine: tuple[Tensor, Tensor] | None,
    alpha: Tensor,
    scale: Tensor | None,
    spec: _NormSpec,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_merge_bwd_kernel` with fewer passes on CPU, where reading ``alpha`` is free: the
    scalar goes into ``add``/``addcmul`` and the outputs are written over their last input."""
    if dy.device.type != "cpu" or spec.vjp_sum_ is None:
        return _merge_bwd_kernel(dy, y, t, u, f_affine, s_affine, alpha, scale, spec)
    al = float(alpha)
    g = _up(dy)
    if y is not None:
        g = torch.ops.aten.threshold_backward(g, y, 0)
    f = _affine(t, f_affine)
    s32 = _affine(u, s_affine)
    a = spec.forward(f)
    del f
    gb = g if scale is None else g * _up(scale)
    gsa = torch.mul(gb, s32).mul_(a)
    d_f, d_alpha = spec.vjp_sum_(a, gsa)
    d_f = torch.add(gb, d_f, alpha=al, out=d_f)
    d_s = torch.addcmul(g, gb, a, value=al, out=a)
    return d_f, d_s, d_alpha


@dataclass(frozen=True)
class _Kernels:
    fwd: Callable[..., Tensor]
    bwd: Callable[..., tuple[Tensor, Tensor, Tensor]]
    # apply eval-mode norms inside the forward kernel (fused, but rounded differently from the
    # native BatchNorm kernel); False: the native kernel, so that alpha = 0 is bit-exact
    fuse_eval_norm: bool


_EAGER = _Kernels(_merge_fwd_eager, _merge_bwd_eager, fuse_eval_norm=False)
_COMPILED: _Kernels | None = None


def _compiled_kernels() -> _Kernels:
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = _Kernels(
            torch.compile(_merge_fwd_kernel, dynamic=True, fullgraph=True),
            torch.compile(_merge_bwd_kernel, dynamic=True, fullgraph=True),
            fuse_eval_norm=True,
        )
    return _COMPILED
