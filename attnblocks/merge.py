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

The lean op runs on one of the backends of :func:`list_merge_backends`:

- ``"native"`` (default): on CPU, for float32 NCHW tensors and the spatial or sigmoid normalization,
  fused C++ loops (:mod:`attnblocks._merge_native`) that apply the BatchNorms on the fly, compute
  the mask one ``(n, c)`` plane at a time while it is in cache and fold the whole backward, BatchNorm
  backward included, into one pass per channel. They are compiled once per machine with the system
  C++ compiler and cached. Everywhere else (CUDA, other dtypes, channels_last, the channel or a
  custom normalization, no compiler) the ``eager`` kernels run.
- ``"eager"``: element-wise kernels in pure PyTorch; runs anywhere.
- ``"compiled"``: the same kernels through ``torch.compile`` (fused C++ on CPU, Triton on CUDA;
  needs a working compiler toolchain).
- ``"reference"``: always the straightforward composition.

Choose with :func:`set_merge_backend` or the environment variable ``ATTNBLOCKS_MERGE_BACKEND``. Inside
``torch.compile`` the straightforward composition is used whatever the backend: the compiler fuses
it and recomputes its element-wise parts by itself.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from . import _merge_native as _native
from ._merge_kernels import _EAGER, _compiled_kernels, _Kernels, _norm_spec
from ._merge_op import _BN, _ARLMerge, _Config
from .normalize import get_normalization, sigmoid_attention, spatial_softmax

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


# --- backends -------------------------------------------------------------------------------------

_BACKENDS: dict[str, Callable[[], _Kernels] | None] = {
    "eager": lambda: _EAGER,
    "native": lambda: _EAGER,  # the eager kernels where the fused C++ ones do not apply
    "compiled": _compiled_kernels,
    "reference": None,
}
_backend = os.environ.get("ATTNBLOCKS_MERGE_BACKEND", "native")
if _backend not in _BACKENDS:
    raise ValueError(
        f"ATTNBLOCKS_MERGE_BACKEND={_backend!r} is not a merge backend; known: {sorted(_BACKENDS)}"
    )


def list_merge_backends() -> list[str]:
    """Names of the ARL merge backends: ``compiled``, ``eager``, ``native`` (default), ``reference``."""
    return sorted(_BACKENDS)


def get_merge_backend() -> str:
    """The backend :func:`arl_merge` and :func:`arl_merge_bn` use now."""
    return _backend


def set_merge_backend(name: str) -> str:
    """Select the merge backend for every ARL block; returns the previous one.

    ``"native"`` (default): the memory-lean custom autograd op on fused C++ kernels where they apply
    (CPU, float32, NCHW, spatial or sigmoid normalization; built on first use), else on the eager
    kernels. ``"eager"``: the op in plain PyTorch. ``"compiled"``: the op with its element-wise
    kernels fused by ``torch.compile`` (C++ on CPU, Triton on CUDA; the first call of each
    dtype/normalization compiles for some seconds). ``"reference"``: the straightforward composition
    of :func:`arl_merge_reference` (autograd saves every intermediate).

    Raises:
        ValueError: unknown backend name.
    """
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"unknown merge backend {name!r}; known: {list_merge_backends()}")
    previous, _backend = _backend, name
    return previous


def lean_merge_active(tap: nn.Module | None = None, inputs: tuple[Tensor, ...] = ()) -> bool:
    """True when the lean merge will run: backend not ``reference``; not inside ``torch.compile``
    or ``torch.jit.trace`` (a trace records tensor ops only: it would miss the fused kernels and
    freeze ``alpha`` into a constant); if given, no hook on the attention ``tap`` (a recorded mask
    must be materialised) and ``inputs`` that carry no forward-mode tangent and no ``torch.func``
    transform (the custom op has neither a jvp nor a vmap rule)."""
    if _backend == "reference" or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if any(_transformed(x) for x in inputs):
        return False
    return tap is None or not _has_hooks(tap)


_is_functorch_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)


def _transformed(x: Tensor) -> bool:
    """True if ``x`` is a dual tensor of forward-mode AD or a ``torch.func`` (vmap, jvp, grad)
    wrapper: only plain tensor ops carry its tangents and batch dimensions. (Non-tensors: False,
    left for the input checks to report.)"""
    if not isinstance(x, Tensor):
        return False
    if _is_functorch_wrapped is not None and _is_functorch_wrapped(x):
        return True
    if getattr(fwAD, "_current_level", 0) < 0:  # no dual level open: no tangent anywhere
        return False
    return fwAD.unpack_dual(x).tangent is not None


def _has_hooks(module: nn.Module) -> bool:
    """True if ``module`` has forward or backward hooks, which a fused (never called) module skips."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    )


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
    if relu is None or not lean_merge_active(tap, (f, shortcut)):
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
    return _apply(f, shortcut, alpha, scale, cfg, normalization, (None,) * 8)


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
    lean = lean_merge_active(tap, (t, shortcut))
    if not (fusable_norm(norm) and s_fuse and relu is not None and lean):
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
    return _apply(
        t, shortcut, alpha, scale, cfg, normalization, _bn_params(norm) + _bn_params(shortcut_norm)
    )


_NATIVE_CODES = {spatial_softmax: _native.SPATIAL, sigmoid_attention: _native.SIGMOID}
_warned = False


def _native_ready() -> bool:
    """Build or load the fused kernels; warn once, and use the eager kernels, if that fails."""
    global _warned
    if _native.native_available():
        return True
    if not _warned:
        _warned = True
        warnings.warn(
            f"attnblocks: the native ARL merge kernels are unavailable ({_native.native_error()}); "
            "using the eager kernels. Set ATTNBLOCKS_MERGE_BACKEND=eager to choose them explicitly.",
            RuntimeWarning,
            stacklevel=4,
        )
    return False


def _apply(
    t: Tensor,
    u: Tensor,
    alpha: Tensor,
    scale: Tensor | None,
    cfg: _Config,
    normalization: str | Callable[[Tensor], Tensor],
    params: tuple[Tensor | None, ...],
) -> Tensor:
    """Run the lean op: the fused C++ kernels when the backend is ``native`` and they apply, else
    the backend's element-wise kernels in :class:`_ARLMerge`."""
    if _backend == "native":
        code = _NATIVE_CODES.get(get_normalization(normalization))
        batch_stats = [bn for bn in (cfg.f_norm, cfg.s_norm) if bn is not None and bn.train]
        one_value = batch_stats and t.shape[0] * t.shape[2] * t.shape[3] < 2
        if code is not None and not one_value and _native.native_fits(t, u, alpha, scale, params):
            if _native_ready():
                grads = torch.is_grad_enabled() and any(
                    x is not None and x.requires_grad for x in (t, u, alpha, *params)
                )
                if not grads:
                    fp, sp = params[:4], params[4:]
                    return _native.native_forward(t, u, alpha, scale, cfg, code, fp, sp)[0]
                return _native.NativeMerge.apply(t, u, alpha, scale, cfg, code, *params)
    return _ARLMerge.apply(t, u, alpha, scale, cfg, *params)


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
