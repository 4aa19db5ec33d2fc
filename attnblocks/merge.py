"""The ARL merge: the element-wise epilogue of an attention residual block, and a memory-lean form.

    y = act( s + drop_path( F + alpha * A * s ) ),   A = N(F)

``F`` is the residual branch (after its last norm and SE, before the activation), ``s`` the shortcut,
``alpha`` the block's learnable scale gate and ``A`` the attention mask. With ``alpha = 0`` this is the
plain residual block ``act(s + drop_path(F))``.

Two implementations compute the same numbers:

- :func:`arl_merge_reference` — one autograd op per term. Autograd keeps ``A``, ``alpha * A`` and the
  shortcut for backward: about 1.5x the saved activations of the plain network.
- :func:`arl_merge` / :func:`arl_merge_bn` — one custom autograd op that saves only what backward
  needs and recomputes the rest. :func:`arl_merge_bn` also takes over the block's last
  ``BatchNorm2d``: it saves the norm's *input* (which the plain norm saves anyway) and recomputes
  ``F`` and ``A`` in backward, so an ARL network saves no more than the plain one apart from the
  shortcut of projection blocks. Backward, per element (``z`` the pre-activation, ``d = drop_path``
  scale, ``g = dL/dz * act'(z)``)::

      dL/ds     = g + alpha * d * g * A
      dL/dF     = d * g + vjp_N(F; alpha * d * g * s)        (+ the BatchNorm backward to its input)
      dL/dalpha = sum(d * g * A * s)

  with ``vjp_N`` the closed form of the spatial/channel softmax or sigmoid, or autograd on a
  recomputed ``N(F)`` for a custom normalization.

The element-wise kernels run on one of the backends of :func:`list_merge_backends`: ``"eager"``
(default; pure PyTorch, runs anywhere), ``"compiled"`` (the same kernels through ``torch.compile``:
fused C++ on CPU, Triton on CUDA; needs a working compiler toolchain) or ``"reference"`` (always the
straightforward composition). Choose with :func:`set_merge_backend` or the environment variable
``ATTNBLOCKS_MERGE_BACKEND``. Inside ``torch.compile`` the straightforward composition is used
whatever the backend: the compiler fuses it and recomputes its element-wise parts by itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .normalize import channel_softmax, get_normalization, sigmoid_attention, spatial_softmax

__all__ = [
    "arl_merge",
    "arl_merge_bn",
    "arl_merge_reference",
    "fusable_norm",
    "get_merge_backend",
    "lean_merge_active",
    "list_merge_backends",
    "set_merge_backend",
]

Act = Callable[[Tensor], Tensor]


def arl_merge_reference(
    f: Tensor,
    shortcut: Tensor,
    alpha: Tensor,
    attn: Tensor,
    act: Act,
    drop_path: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Straightforward ARL merge, one autograd op per term.

    Args:
        f: residual branch ``F``, ``(N, C, H, W)``.
        shortcut: shortcut ``s``, same shape as ``f``.
        alpha: scalar scale gate.
        attn: attention mask ``N(F)``, same shape as ``f``.
        act: the block's output activation.
        drop_path: stochastic depth applied to the whole branch ``F + alpha * A * s`` (or None).

    Returns:
        The block output, same shape as ``f``.
    """
    branch = f + alpha * attn * shortcut
    if drop_path is not None:
        branch = drop_path(branch)
    return act(shortcut + branch)


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


# --- backends -------------------------------------------------------------------------------------

_BACKENDS: dict[str, Callable[[], _Kernels] | None] = {
    "eager": lambda: _EAGER,
    "compiled": _compiled_kernels,
    "reference": None,
}
_backend = os.environ.get("ATTNBLOCKS_MERGE_BACKEND", "eager")
if _backend not in _BACKENDS:
    raise ValueError(
        f"ATTNBLOCKS_MERGE_BACKEND={_backend!r} is not a merge backend; known: {sorted(_BACKENDS)}"
    )


def list_merge_backends() -> list[str]:
    """Names of the ARL merge backends: ``compiled``, ``eager`` (default), ``reference``."""
    return sorted(_BACKENDS)


def get_merge_backend() -> str:
    """The backend :func:`arl_merge` and :func:`arl_merge_bn` use now."""
    return _backend


def set_merge_backend(name: str) -> str:
    """Select the merge backend for every ARL block; returns the previous one.

    ``"eager"``: memory-lean custom autograd op in plain PyTorch (default). ``"compiled"``: the same
    op with its element-wise kernels fused by ``torch.compile`` (C++ on CPU, Triton on CUDA; the first
    call of each dtype/normalization compiles for some seconds). ``"reference"``: the straightforward
    composition of :func:`arl_merge_reference` (autograd saves every intermediate).

    Raises:
        ValueError: unknown backend name.
    """
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"unknown merge backend {name!r}; known: {list_merge_backends()}")
    previous, _backend = _backend, name
    return previous


def lean_merge_active(tap: nn.Module | None = None) -> bool:
    """True when the lean merge will run: backend not ``reference``, not inside ``torch.compile``
    and, if given, no hook on the attention ``tap`` (a recorded mask must be materialised)."""
    if _backend == "reference" or torch.compiler.is_compiling():
        return False
    return tap is None or not _has_hooks(tap)


def _has_hooks(module: nn.Module) -> bool:
    """True if ``module`` has forward or backward hooks, which a fused (never called) module skips."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    )


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


# --- public entry points --------------------------------------------------------------------------

_ACTS: dict[type, bool] = {nn.ReLU: True, nn.Identity: False}  # module type -> is ReLU


def _act_kind(act: Act) -> bool | None:
    """True for ReLU, False for identity, None for anything the lean op does not implement."""
    if act is torch.relu or act is torch.nn.functional.relu:
        return True
    return _ACTS.get(type(act))


def _drop_path_scale(drop_path: Callable[[Tensor], Tensor] | None, f: Tensor) -> Tensor | None:
    """Per-sample stochastic-depth factor ``d`` (N, 1, 1, 1), drawn exactly as ``drop_path`` would."""
    if drop_path is None or isinstance(drop_path, nn.Identity):
        return None
    if isinstance(drop_path, nn.Module) and not drop_path.training:
        return None
    ones = torch.ones((f.shape[0], 1, 1, 1), dtype=f.dtype, device=f.device)
    return drop_path(ones)


def _check(f: Tensor, shortcut: Tensor, alpha: Tensor, where: str) -> None:
    for name, x in (("F", f), ("shortcut", shortcut), ("alpha", alpha)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{where}: {name} must be a Tensor, got {type(x).__name__}")
    if f.dim() != 4 or f.shape != shortcut.shape:
        raise ValueError(
            f"{where}: expected F and shortcut of one 4D shape (N, C, H, W), got "
            f"{tuple(f.shape)} and {tuple(shortcut.shape)}"
        )
    if alpha.numel() != 1:
        raise ValueError(f"{where}: alpha must be a scalar, got shape {tuple(alpha.shape)}")


def _reference(
    f: Tensor,
    shortcut: Tensor,
    alpha: Tensor,
    normalization: str | Callable[[Tensor], Tensor],
    act: Act,
    drop_path: Callable[[Tensor], Tensor] | None,
    tap: Callable[[Tensor], Tensor] | None,
) -> Tensor:
    attn = get_normalization(normalization)(f)
    if tap is not None:
        attn = tap(attn)
    return arl_merge_reference(f, shortcut, alpha, attn, act, drop_path)


def arl_merge(
    f: Tensor,
    shortcut: Tensor,
    alpha: Tensor,
    normalization: str | Callable[[Tensor], Tensor] = "spatial",
    act: Act = torch.relu,
    drop_path: Callable[[Tensor], Tensor] | None = None,
    *,
    tap: nn.Module | None = None,
) -> Tensor:
    """ARL merge ``act(s + drop_path(F + alpha * N(F) * s))`` as one memory-lean autograd op.

    Saves ``F`` and ``s`` (and the output for a ReLU) instead of every intermediate, recomputing
    ``N(F)`` in backward. Same values and gradients as :func:`arl_merge_reference`.

    Args:
        f: residual branch ``F``, ``(N, C, H, W)``.
        shortcut: shortcut ``s``, same shape.
        alpha: the scalar scale gate (0-dim or one element).
        normalization: a registered normalization name or callable (default ``"spatial"``).
        act: output activation; ReLU and identity run lean, anything else runs the reference.
        drop_path: stochastic depth on the whole branch (a per-sample factor), or None.
        tap: the block's attention tap; when it has hooks (e.g. :func:`record_attention`) the mask
            is materialised and passed through it (reference path).

    Returns:
        ``y``, shape of ``f``, dtype ``promote(F, s)``.

    Raises:
        TypeError, ValueError: non-tensor inputs, shape mismatch, non-scalar alpha, unknown
            normalization.
    """
    _check(f, shortcut, alpha, "arl_merge")
    relu = _act_kind(act)
    if relu is None or not lean_merge_active(tap):
        return _reference(f, shortcut, alpha, normalization, act, drop_path, tap)
    cfg = _Config(
        spec=_norm_spec(normalization),
        relu=relu,
        kernels=_BACKENDS[_backend](),  # type: ignore[misc]
        f_norm=None,
        s_norm=None,
        out_dtype=torch.promote_types(f.dtype, shortcut.dtype),
    )
    scale = _drop_path_scale(drop_path, f)
    return _ARLMerge.apply(f, shortcut, alpha, scale, cfg, *(None,) * 8)


def fusable_norm(norm: nn.Module | None) -> bool:
    """True if ``norm`` is a layer :func:`arl_merge_bn` can fuse: exactly ``nn.BatchNorm2d``, with no
    hooks (a fused norm is never called, so its hooks would not run)."""
    return type(norm) is nn.BatchNorm2d and not _has_hooks(norm)


def arl_merge_bn(
    t: Tensor,
    norm: nn.Module,
    shortcut: Tensor,
    alpha: Tensor,
    normalization: str | Callable[[Tensor], Tensor] = "spatial",
    act: Act = torch.relu,
    drop_path: Callable[[Tensor], Tensor] | None = None,
    *,
    shortcut_norm: nn.Module | None = None,
    tap: nn.Module | None = None,
) -> Tensor:
    """ARL merge with the block's last norm (and the shortcut projection's norm) fused in.

    Computes ``act(s + drop_path(F + alpha * N(F) * s))`` with ``F = norm(t)`` and
    ``s = shortcut_norm(shortcut)`` (or ``s = shortcut`` when ``shortcut_norm`` is None). For
    ``nn.BatchNorm2d`` layers (train or eval mode; running statistics updated exactly as the module
    does) the op saves the norms' *inputs*, which plain norm layers save too, and recomputes ``F``,
    ``s`` and ``N(F)`` in backward: the ARL block then saves no more activations than the plain block.
    Other norm layers are applied as they are and :func:`arl_merge` runs.

    Args:
        t: input of the branch's last norm (``conv3`` output of a bottleneck), ``(N, C, H, W)``.
        norm: the branch's last norm layer (``bn3`` / ``bn2``).
        shortcut: the shortcut, or the input of ``shortcut_norm``; same shape as ``t``.
        alpha, normalization, act, drop_path, tap: see :func:`arl_merge`.
        shortcut_norm: the last layer of the shortcut projection (``downsample[-1]``), or None.

    Returns:
        ``y``, shape of ``t``.
    """
    for name, m in (("norm", norm), ("shortcut_norm", shortcut_norm)):
        if m is not None and not isinstance(m, nn.Module):
            raise TypeError(f"arl_merge_bn: {name} must be an nn.Module, got {type(m).__name__}")
    relu = _act_kind(act)
    s_fuse = shortcut_norm is None or fusable_norm(shortcut_norm)
    if not (fusable_norm(norm) and s_fuse and relu is not None and lean_merge_active(tap)):
        s = shortcut if shortcut_norm is None else shortcut_norm(shortcut)
        return arl_merge(norm(t), s, alpha, normalization, act, drop_path, tap=tap)
    _check(t, shortcut, alpha, "arl_merge_bn")
    for name, m, x in (("norm", norm, t), ("shortcut_norm", shortcut_norm, shortcut)):
        if m is not None and x.shape[1] != m.num_features:
            raise ValueError(
                f"arl_merge_bn: {name} {type(m).__name__}({m.num_features}) got "
                f"{x.shape[1]} channels"
            )
    cfg = _Config(
        spec=_norm_spec(normalization),
        relu=relu,
        kernels=_BACKENDS[_backend](),  # type: ignore[misc]
        f_norm=_bn_mode(norm),
        s_norm=None if shortcut_norm is None else _bn_mode(shortcut_norm),
        out_dtype=torch.promote_types(t.dtype, shortcut.dtype),
    )
    scale = _drop_path_scale(drop_path, t)
    return _ARLMerge.apply(
        t, shortcut, alpha, scale, cfg, *_bn_params(norm), *_bn_params(shortcut_norm)
    )


def _bn_params(bn: nn.Module | None) -> tuple[Tensor | None, ...]:
    if bn is None:
        return (None, None, None, None)
    train = bn.training or bn.running_mean is None
    keep_stats = not train or bn.track_running_stats
    rm, rv = (bn.running_mean, bn.running_var) if keep_stats else (None, None)
    return bn.weight, bn.bias, rm, rv


def _bn_mode(bn: nn.Module) -> _BN:
    """Batch or running statistics, and the momentum of the update, exactly as ``_BatchNorm.forward``."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    return _BN(train=use_batch, momentum=factor, eps=float(bn.eps))
