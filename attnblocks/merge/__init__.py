"""The ARL merge: the element-wise epilogue of an attention residual block.

    y = act( s + drop_path( F + alpha * A * s ) ),   A = N(F)

``F`` is the residual branch (after its last norm and SE, before the activation), ``s`` the shortcut,
``alpha`` the block's learnable scale gate and ``A`` the attention mask. With ``alpha = 0`` this is the
plain residual block ``act(s + drop_path(F))``.

- :func:`arl_merge_reference` (:mod:`.reference`) writes it with plain tensor ops: the definition,
  and what ``torch.export``, ONNX, ``torch.jit.trace`` and ``torch.fx`` record. Autograd keeps ``A``,
  ``alpha * A`` and the shortcut: about 1.5x the saved activations of the plain network.
- :func:`arl_merge` / :func:`arl_merge_bn` run the registered operator ``torch.ops.attnblocks.arl_merge``
  (:mod:`.op`), which saves only what backward needs and recomputes the rest. :func:`arl_merge_bn`
  also takes over the block's last ``BatchNorm2d`` (and the shortcut projection's): it saves the
  norms' *inputs*, which plain norm layers save anyway, so an ARL network saves no more than the
  plain one. The operator has fake implementations and registered autograd, so ``torch.compile``
  (no graph break) and the profiler see it by name; its kernels are fused C++ on CPU
  (:mod:`.native`), Triton on CUDA (:mod:`.triton_kernels`) and plain PyTorch elsewhere
  (:mod:`.eager`).

The *backend* (:func:`set_merge_backend`, or the environment variable ``ATTNBLOCKS_MERGE_BACKEND``)
chooses: ``"native"`` (default) the operator on the fused kernels where they apply, ``"eager"`` the
operator on the plain-PyTorch kernels, ``"reference"`` the plain composition. Custom normalizations,
activations other than ReLU/identity, hooked attention taps, forward-mode AD and ``torch.func``
transforms always run the composition.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from ..normalize import channel_softmax, get_normalization, sigmoid_attention, spatial_softmax
from . import native
from .op import arl_merge_backward_op, arl_merge_op
from .reference import arl_merge_reference
from .spec import CHANNEL, SIGMOID, SPATIAL

__all__ = [
    "arl_merge",
    "arl_merge_backward_op",
    "arl_merge_bn",
    "arl_merge_op",
    "arl_merge_reference",
    "fusable_norm",
    "get_merge_backend",
    "has_hooks",
    "lean_merge_active",
    "list_merge_backends",
    "prepare_merge_kernels",
    "set_merge_backend",
]

Act = Callable[[Tensor], Tensor]
_BACKENDS = ("eager", "native", "reference")
_ENV = "ATTNBLOCKS_MERGE_BACKEND"
_backend: str | None = None  # None: read the environment variable at first use


def list_merge_backends() -> list[str]:
    """Names of the ARL merge backends: ``eager``, ``native`` (default), ``reference``."""
    return list(_BACKENDS)


def get_merge_backend() -> str:
    """The backend :func:`arl_merge` and :func:`arl_merge_bn` use now.

    Raises:
        ValueError: ``ATTNBLOCKS_MERGE_BACKEND`` names no backend (and none was set explicitly).
    """
    if _backend is not None:
        return _backend
    name = os.environ.get(_ENV, "native").strip() or "native"
    if name not in _BACKENDS:
        raise ValueError(f"{_ENV}={name!r} is not a merge backend; known: {list(_BACKENDS)}")
    return name


def set_merge_backend(name: str) -> str:
    """Select the merge backend for every ARL block; returns the previous one.

    ``"native"`` (default): the operator on fused kernels where they apply (C++ on CPU for float32
    NCHW or channels_last and the spatial or sigmoid normalization; Triton on CUDA), else on the
    eager ones. ``"eager"``: the operator in plain PyTorch. ``"reference"``: the plain composition of
    :func:`arl_merge_reference` (autograd saves every intermediate).

    Raises:
        ValueError: unknown backend name.
    """
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"unknown merge backend {name!r}; known: {list(_BACKENDS)}")
    previous, _backend = get_merge_backend() if _backend is None else _backend, name
    return previous


def prepare_merge_kernels() -> bool:
    """Build (once per machine) and load the fused CPU kernels now, if the backend uses them; True if
    they are ready. :class:`~attnblocks.ARLWrapper` calls it, so that no build happens inside a
    training step."""
    return get_merge_backend() == "native" and native.prepare()


def has_hooks(module: nn.Module) -> bool:
    """True if ``module`` has forward or backward hooks, which a fused (never called) module skips."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    )


def lean_merge_active(tap: nn.Module | None = None, inputs: tuple[Tensor, ...] = ()) -> bool:
    """True when the operator will run: backend not ``reference``; not inside ``torch.export``
    (which records the composition, so that an exported program holds standard ops only) or
    ``torch.jit.trace`` (a trace records tensor ops only); if given, no hook on the attention
    ``tap`` (a recorded mask must be materialised) and ``inputs`` that carry no forward-mode tangent
    and no ``torch.func`` transform (the operator has neither a jvp nor a vmap rule)."""
    if get_merge_backend() == "reference" or torch.jit.is_tracing():
        return False
    if _is_exporting():
        return False
    if any(_transformed(x) for x in inputs):
        return False
    return tap is None or not has_hooks(tap)


_is_functorch_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
_is_exporting = getattr(torch.compiler, "is_exporting", None) or (lambda: False)  # torch < 2.6


def _transformed(x: Tensor) -> bool:
    """True if ``x`` is a dual tensor of forward-mode AD or a ``torch.func`` (vmap, jvp, grad)
    wrapper. (Non-tensors: False, left for the input checks to report.)"""
    if not isinstance(x, Tensor) or torch.compiler.is_compiling():
        return False
    if _is_functorch_wrapped is not None and _is_functorch_wrapped(x):
        return True
    if getattr(fwAD, "_current_level", 0) < 0:  # no dual level open: no tangent anywhere
        return False
    return fwAD.unpack_dual(x).tangent is not None


# --- public entry points --------------------------------------------------------------------------

_CODES = {spatial_softmax: SPATIAL, sigmoid_attention: SIGMOID, channel_softmax: CHANNEL}
_ACTS: dict[type, bool] = {nn.ReLU: True, nn.Identity: False}  # module type -> is ReLU


def _act_kind(act: Act) -> bool | None:
    """True for ReLU, False for identity, None for anything the operator does not implement."""
    if act is torch.relu or act is torch.nn.functional.relu:
        return True
    return _ACTS.get(type(act))


def _drop_path_scale(drop_path: Callable[[Tensor], Tensor] | None, f: Tensor) -> Tensor | None:
    """Per-sample stochastic-depth factor ``d`` (N, 1, 1, 1), drawn exactly as ``drop_path`` would."""
    if drop_path is None or isinstance(drop_path, nn.Identity):
        return None
    if isinstance(drop_path, nn.Module) and not drop_path.training:
        return None
    return drop_path(torch.ones((f.shape[0], 1, 1, 1), dtype=f.dtype, device=f.device))


def _check(f: Tensor, shortcut: Tensor, alpha: Tensor, where: str) -> None:
    for name, x in (("F", f), ("shortcut", shortcut), ("alpha", alpha)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{where}: {name} must be a Tensor, got {type(x).__name__}")
    if torch.jit.is_tracing():  # traced sizes are tensors: comparing them warns
        return
    if f.dim() != 4 or f.shape != shortcut.shape:
        raise ValueError(
            f"{where}: expected F and shortcut of one 4D shape (N, C, H, W), got "
            f"{tuple(f.shape)} and {tuple(shortcut.shape)}"
        )
    if alpha.numel() != 1:
        raise ValueError(f"{where}: alpha must be a scalar, got shape {tuple(alpha.shape)}")


def _kernels() -> str:
    return "eager" if get_merge_backend() == "eager" else "native"


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
    """ARL merge ``act(s + drop_path(F + alpha * N(F) * s))`` through the registered operator.

    Saves ``F`` and ``s`` (and the output for a ReLU) instead of every intermediate, recomputing
    ``N(F)`` in backward. Same values and gradients as :func:`arl_merge_reference`.

    Args:
        f: residual branch ``F``, ``(N, C, H, W)``.
        shortcut: shortcut ``s``, same shape.
        alpha: the scalar scale gate (0-dim or one element).
        normalization: a registered normalization name or callable (default ``"spatial"``).
        act: output activation; ReLU and identity run the operator, anything else the composition.
        drop_path: stochastic depth on the whole branch (a per-sample factor), or None.
        tap: the block's attention tap; when it has hooks (e.g. :func:`record_attention`) the mask
            is materialised and passed through it (composition).

    Returns:
        ``y``, shape of ``f``, dtype ``promote(F, s)``.

    Raises:
        TypeError, ValueError: non-tensor inputs, shape mismatch, non-scalar alpha, unknown
            normalization.
    """
    _check(f, shortcut, alpha, "arl_merge")
    fn = get_normalization(normalization)
    relu, code = _act_kind(act), _CODES.get(fn)
    if relu is None or code is None or not lean_merge_active(tap, (f, shortcut)):
        attn = fn(f)
        if tap is not None:
            attn = tap(attn)
        return arl_merge_reference(f, shortcut, alpha, attn, act, drop_path)
    scale = _drop_path_scale(drop_path, f)
    none4 = (None,) * 4
    return arl_merge_op(
        f, shortcut, alpha, scale, *none4, *none4, code, relu, 0, 0, (0.0,) * 4, _kernels()
    )[0]


def fusable_norm(norm: nn.Module | None) -> bool:
    """True if ``norm`` is a layer :func:`arl_merge_bn` can fuse: exactly ``nn.BatchNorm2d``, with no
    hooks (a fused norm is never called, so its hooks would not run)."""
    return type(norm) is nn.BatchNorm2d and not has_hooks(norm)


def _bn_args(bn: nn.Module | None) -> tuple[tuple[Tensor | None, ...], int, tuple[float, float]]:
    """``((weight, bias, running_mean, running_var), mode, (eps, momentum))`` of a fused norm,
    exactly as ``_BatchNorm.forward`` would run it (``num_batches_tracked`` counted here)."""
    if bn is None:
        return (None,) * 4, 0, (0.0, 0.0)
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            momentum = 1.0 / float(bn.num_batches_tracked)
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep = not batch_stats or bn.track_running_stats
    rm, rv = (bn.running_mean, bn.running_var) if keep else (None, None)
    return (bn.weight, bn.bias, rm, rv), 2 if batch_stats else 1, (float(bn.eps), momentum)


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
    does) the operator saves the norms' *inputs*, which plain norm layers save too, and recomputes
    ``F``, ``s`` and ``N(F)`` in backward: the ARL block then saves no more activations than the
    plain block. Other norm layers are called as they are and :func:`arl_merge` runs.

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
    fuse = fusable_norm(norm) and (shortcut_norm is None or fusable_norm(shortcut_norm))
    code = _CODES.get(get_normalization(normalization))
    if fuse and isinstance(t, Tensor) and (norm.training or norm.running_mean is None):
        fuse = t.dim() == 4 and t.shape[0] * t.shape[2] * t.shape[3] > 1  # else BN's own error
    if fuse and torch.compiler.is_compiling():  # the cumulative average reads a counter
        fuse = all(m is None or m.momentum is not None for m in (norm, shortcut_norm))
    if not (fuse and code is not None and _act_kind(act) is not None) or not lean_merge_active(
        tap, (t, shortcut)
    ):
        s = shortcut if shortcut_norm is None else shortcut_norm(shortcut)
        return arl_merge(norm(t), s, alpha, normalization, act, drop_path, tap=tap)
    _check(t, shortcut, alpha, "arl_merge_bn")
    for name, m, x in (("norm", norm, t), ("shortcut_norm", shortcut_norm, shortcut)):
        if m is not None and x.shape[1] != m.num_features:
            raise ValueError(
                f"arl_merge_bn: {name} {type(m).__name__}({m.num_features}) got "
                f"{x.shape[1]} channels"
            )
    f_params, f_mode, f_hyper = _bn_args(norm)
    s_params, s_mode, s_hyper = _bn_args(shortcut_norm)
    scale = _drop_path_scale(drop_path, t)
    y, _, f_running, _, s_running = arl_merge_op(
        t, shortcut, alpha, scale, *f_params, *s_params, code, bool(_act_kind(act)),
        f_mode, s_mode, (*f_hyper, *s_hyper), _kernels(),
    )  # fmt: skip
    with torch.no_grad():  # the running-statistics update nn.BatchNorm2d makes, computed by the op
        for bn, running in ((norm, f_running), (shortcut_norm, s_running)):
            if bn is not None and running.numel():
                bn.running_mean.copy_(running[0])
                bn.running_var.copy_(running[1])
    return y
