"""The ARL merge as registered PyTorch operators: ``torch.ops.attnblocks.arl_merge`` and its backward.

``arl_merge(t, u, alpha, scale, <branch norm>, <shortcut norm>, normalization, relu, kernels)``
computes ``y = act(u' + d * (t' + alpha * N(t') * u'))`` with ``t' = bn_f(t)`` and ``u' = bn_s(u)``
(each norm optional), and returns ``(y, f_stats, s_stats)``: the (2, C) float32 mean and invstd each
norm used (empty without a norm), which backward needs. It mutates the norms' running statistics
in train mode, as ``nn.BatchNorm2d`` does. ``arl_merge_backward`` returns the gradients wrt ``t``,
``u``, ``alpha`` and the norms' weights and biases, recomputing ``F``, ``s`` and ``N(F)``.

Both ops carry fake (meta) implementations, so ``torch.compile``, ``torch.export`` and FakeTensor
see them, and autograd is registered through ``torch.library``. Kernels per device:

- CPU: the fused C++ kernels (:mod:`.native`: float32, NCHW or channels_last, spatial softmax or
  sigmoid), else the eager ones (:mod:`.eager`).
- CUDA: Triton kernels (:mod:`.triton_kernels`: float32/bfloat16/float16, NCHW or channels_last,
  every built-in normalization), else the eager ones.
- ``kernels="eager"`` selects the eager ones everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from . import eager, native
from .spec import BATCH_STATS, NO_NORM, NormIn, NormOut

__all__ = ["arl_merge_backward_op", "arl_merge_op"]


def _norm_in(
    w: Tensor | None, b: Tensor | None, rm: Tensor | None, rv: Tensor | None, mode: int, hyper: Any
) -> NormIn:
    return NormIn(w, b, rm, rv, mode, float(hyper[0]), float(hyper[1]))


_triton_error: str | None = None


def _kernels(device: torch.device, kernels: str, fits_native: bool) -> Any:
    """The module whose ``merge_forward``/``merge_backward`` run on this device."""
    if kernels == "eager":
        return eager
    if device.type == "cpu":
        return native if fits_native and native.prepare() else eager
    if device.type == "cuda" and _triton_error is None:
        from . import triton_kernels

        return triton_kernels if triton_kernels.available() else eager
    return eager


def _run(impl: Any, name: str, *args: Any) -> tuple[Tensor, ...]:
    """``impl.<name>(*args)``; if the Triton kernels fail to compile or launch on this machine, one
    log message, and the eager kernels from then on (a training step is never lost to it)."""
    global _triton_error
    try:
        return tuple(getattr(impl, name)(*args))
    except Exception as exc:  # noqa: BLE001 - Triton raises compiler errors of many types
        if impl is eager or impl is native:
            raise
        _triton_error = f"{type(exc).__name__}: {exc}"
        native.log.error(
            "attnblocks: the Triton ARL merge kernels failed (%s); the merge runs its eager "
            "kernels on CUDA from now on",
            _triton_error,
        )
        return tuple(getattr(eager, name)(*args))


@torch.library.custom_op("attnblocks::arl_merge", mutates_args=())
def arl_merge_op(
    t: Tensor,
    u: Tensor,
    alpha: Tensor,
    scale: Tensor | None,
    f_weight: Tensor | None,
    f_bias: Tensor | None,
    f_running_mean: Tensor | None,
    f_running_var: Tensor | None,
    s_weight: Tensor | None,
    s_bias: Tensor | None,
    s_running_mean: Tensor | None,
    s_running_var: Tensor | None,
    normalization: int,
    relu: bool,
    f_mode: int,
    s_mode: int,
    hyper: Sequence[float],
    kernels: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fused ARL merge (see the module docstring). ``hyper`` = (eps, momentum) of the
    branch norm, then of the shortcut norm."""
    f = _norm_in(f_weight, f_bias, f_running_mean, f_running_var, f_mode, hyper[0:2])
    s = _norm_in(s_weight, s_bias, s_running_mean, s_running_var, s_mode, hyper[2:4])
    params = (t, u, alpha, scale, f_weight, f_bias, f_running_mean, f_running_var, s_weight)
    params += (s_bias, s_running_mean, s_running_var)
    impl = _kernels(t.device, kernels, native.fits(t, u, normalization, params))
    return _run(impl, "merge_forward", t, u, alpha, scale, f, s, normalization, relu)


def _stats_like(t: Tensor, mode: int) -> Tensor:
    dtype = torch.promote_types(t.dtype, torch.float32)
    return t.new_empty((2, t.shape[1]) if mode != NO_NORM else (0,), dtype=dtype)


def _running_like(t: Tensor, mode: int, rm: Tensor | None, rv: Tensor | None) -> Tensor:
    keep = mode == BATCH_STATS and rm is not None and rv is not None
    dtype = torch.promote_types(t.dtype, torch.float32)
    return t.new_empty((2, t.shape[1]) if keep else (0,), dtype=dtype)


@arl_merge_op.register_fake
def _(t, u, alpha, scale, f_weight, f_bias, f_rm, f_rv, s_weight, s_bias, s_rm, s_rv,
      normalization, relu, f_mode, s_mode, hyper, kernels):  # fmt: skip
    y = torch.empty_like(t, dtype=torch.promote_types(t.dtype, u.dtype))
    return (
        y, _stats_like(t, f_mode), _running_like(t, f_mode, f_rm, f_rv),
        _stats_like(u, s_mode), _running_like(u, s_mode, s_rm, s_rv),
    )  # fmt: skip


@torch.library.custom_op("attnblocks::arl_merge_backward", mutates_args=())
def arl_merge_backward_op(
    dy: Tensor,
    y: Tensor | None,
    t: Tensor,
    u: Tensor,
    alpha: Tensor,
    scale: Tensor | None,
    f_weight: Tensor | None,
    f_bias: Tensor | None,
    f_stats: Tensor,
    s_weight: Tensor | None,
    s_bias: Tensor | None,
    s_stats: Tensor,
    normalization: int,
    f_mode: int,
    s_mode: int,
    need_t: bool,
    need_u: bool,
    kernels: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`arl_merge_op`: ``(d_t, d_u, d_alpha, d_f_weight, d_f_bias,
    d_s_weight, d_s_bias)`` (an empty tensor for a missing weight or bias). ``y``: the forward's
    output for a ReLU (its mask), None for the identity."""
    f = NormOut(f_weight, f_bias, f_stats, f_mode)
    s = NormOut(s_weight, s_bias, s_stats, s_mode)
    params = (dy, t, u, alpha, scale, f_weight, f_bias, s_weight, s_bias)
    impl = _kernels(t.device, kernels, native.fits(t, u, normalization, params))
    grads = _run(
        impl, "merge_backward", dy, y, t, u, alpha, scale, f, s, normalization, need_t, need_u
    )
    d_t, d_u, *rest = grads
    # an op's outputs never alias its inputs
    return (d_t.clone() if d_t is dy else d_t, d_u.clone() if d_u is dy else d_u, *rest)


@arl_merge_backward_op.register_fake
def _(dy, y, t, u, alpha, scale, f_weight, f_bias, f_stats, s_weight, s_bias, s_stats,
      normalization, f_mode, s_mode, need_t, need_u, kernels):  # fmt: skip
    def vec(p: Tensor | None) -> Tensor:
        if p is None:
            return t.new_empty(0, dtype=torch.promote_types(t.dtype, torch.float32))
        return torch.empty_like(p)

    return (
        torch.empty_like(t), torch.empty_like(u), torch.empty_like(alpha),
        vec(f_weight), vec(f_bias), vec(s_weight), vec(s_bias),
    )  # fmt: skip


# --- autograd ---------------------------------------------------------------------------------------

_ARG = {name: i for i, name in enumerate(
    "t u alpha scale f_weight f_bias f_rm f_rv s_weight s_bias s_rm s_rv normalization relu "
    "f_mode s_mode hyper kernels".split()
)}  # fmt: skip


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    a = {name: inputs[i] for name, i in _ARG.items()}
    y, f_stats, _, s_stats, _ = output
    ctx.static = (a["normalization"], a["f_mode"], a["s_mode"], a["kernels"], a["relu"])
    ctx.has = tuple(a[k] is not None for k in ("f_weight", "f_bias", "s_weight", "s_bias"))
    ctx.save_for_backward(
        a["t"], a["u"], a["alpha"], a["scale"], y if a["relu"] else None,
        a["f_weight"], a["f_bias"], f_stats, a["s_weight"], a["s_bias"], s_stats,
    )  # fmt: skip


def _backward(ctx: Any, dy: Tensor, *_stats_grads: Tensor) -> tuple[Any, ...]:
    t, u, alpha, scale, y, fw, fb, f_stats, sw, sb, s_stats = ctx.saved_tensors
    code, f_mode, s_mode, kernels, _relu = ctx.static
    need = ctx.needs_input_grad
    d_t, d_u, d_alpha, d_fw, d_fb, d_sw, d_sb = arl_merge_backward_op(
        dy, y, t, u, alpha, scale, fw, fb, f_stats, sw, sb, s_stats, code, f_mode, s_mode,
        need[0], need[1], kernels,
    )  # fmt: skip
    has_fw, has_fb, has_sw, has_sb = ctx.has
    return (
        d_t if need[0] else None, d_u if need[1] else None, d_alpha if need[2] else None, None,
        d_fw.to(fw.dtype) if has_fw and need[4] else None,
        d_fb.to(fb.dtype) if has_fb and need[5] else None, None, None,
        d_sw.to(sw.dtype) if has_sw and need[8] else None,
        d_sb.to(sb.dtype) if has_sb and need[9] else None, None, None,
        None, None, None, None, None, None,
    )  # fmt: skip


arl_merge_op.register_autograd(_backward, setup_context=_setup_context)
