"""Attention residual learning (ARL; Zhang, Xie, Xia, Shen, IEEE TMI 2019) for any residual network.

An ARL block adds to a residual block ``y = act(s + F)`` an attention term built from the block's own
residual features, at the cost of one scalar parameter:

    y = act( s + drop_path( F + alpha * N(F) * s ) )

``F`` is the residual branch after its last norm (and SE/attention and layer scale, if any), ``s``
the shortcut (``downsample(x)`` in strided or widening blocks), ``act`` the activation after the sum
(none in inverted residuals, ConvNeXt and pre-activation blocks), ``N`` an attention normalization
(:mod:`attnblocks.normalize`) and ``alpha`` a learnable scale gate. With ``alpha = 0`` the block computes
exactly what the plain block computes, so a converted network starts where the source network was.

:class:`ARLWrapper` converts a model *in its own structure*: every recognised block keeps its class (an
``ARL`` subclass of it), its submodules and their names, and gains an ``alpha`` parameter and an
``attn_map`` tap. State-dict keys therefore stay the source's, plus one ``<block>.alpha`` per block, and
timm's model API (``forward_features``, ``forward_head``, ``reset_classifier``, ``pretrained_cfg``,
``features_only`` models) keeps working.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from . import merge
from ._tracing import is_symbolic_tracing
from .arl_families import register_builtin_blocks
from .arl_registry import _BLOCK_SPECS, list_arl_block_types, register_arl_block
from .arl_select import ConversionReport, select_blocks, unsupported_blocks
from .normalize import NormalizationFn, get_normalization

__all__ = [
    "ARLBlock",
    "ARLWrapper",
    "ConversionReport",
    "convert_block",
    "is_arl_block",
    "list_arl_block_types",
    "register_arl_block",
]

register_builtin_blocks()  # the block families of timm and torchvision (attnblocks.arl_families)

_NO_ACT = nn.Identity()  # the output activation of blocks that add without one


def _no_act(x: Tensor) -> Tensor:  # the same under torch.fx, which only calls the model's modules
    return x


# --- dynamic subclasses (picklable, deep-copyable) ---------------------------------------------------

_SUBCLASSES: dict[tuple[type, type], type] = {}


def _subclass(mixin: type, base: type) -> type:
    key = (mixin, base)
    if key not in _SUBCLASSES:
        name = f"ARL{base.__name__}"
        _SUBCLASSES[key] = type(name, (mixin, base), {"__module__": __name__, "_arl_base": base})
    return _SUBCLASSES[key]


def _new_instance(mixin: type, base: type) -> Any:
    """Unpickling/deep-copy entry point of the dynamic ARL classes."""
    return object.__new__(_subclass(mixin, base))


class _Rebuildable:
    _arl_base: type

    def __reduce_ex__(self, protocol: int):  # noqa: D105 - pickling support
        mixin = next(c for c in type(self).__mro__ if c in (ARLBlock, ARLWrapper))
        return _new_instance, (mixin, self._arl_base), self.__dict__


# --- the block -------------------------------------------------------------------------------------


class ARLBlock(_Rebuildable, nn.Module):
    """Mixin that turns a supported residual block into an ARL block (see the module docstring).

    Not instantiated directly: :func:`convert_block` and :class:`ARLWrapper` give a block the class
    ``ARL<BlockClass>``, a subclass of both this mixin and its own class. The block gains:

    - ``alpha``: the scale gate, a 0-dim parameter;
    - ``attn_map``: an ``nn.Identity`` tap through which the mask ``N(F)`` passes;
    - ``arl_normalization``: the normalization's name (or callable).
    """

    alpha: nn.Parameter
    attn_map: nn.Module
    arl_normalization: str | NormalizationFn

    def forward(self, x: Tensor) -> Tensor:
        spec = _BLOCK_SPECS[self._arl_base]
        drop_path = getattr(self, spec.drop_path) if spec.drop_path else None
        norm = self.arl_normalization
        if is_symbolic_tracing():  # torch.fx feature extractors: plain ops, mask through the tap
            f, shortcut = spec.branches(self, x)
            attn = self.attn_map(get_normalization(norm)(f))
            act = getattr(self, spec.act) if spec.act is not None else _no_act
            return merge.arl_merge_reference(f, shortcut, self.alpha, attn, act, drop_path)
        act = getattr(self, spec.act) if spec.act is not None else _NO_ACT
        if spec.pre_norm is not None and merge.lean_merge_active(self.attn_map):
            pre = spec.pre_norm(self, x)
            if pre is not None:  # fuse the last norms: F, s and N(F) are recomputed in backward
                t, bn = pre
                shortcut, shortcut_norm = self._shortcut_pre_norm(x, spec.shortcut)
                return merge.arl_merge_bn(
                    t, bn, shortcut, self.alpha, norm, act, drop_path, shortcut_norm=shortcut_norm
                )
        f, shortcut = spec.branches(self, x)
        return merge.arl_merge(f, shortcut, self.alpha, norm, act, drop_path, tap=self.attn_map)

    def _shortcut_pre_norm(self, x: Tensor, attr: str | None) -> tuple[Tensor, nn.Module | None]:
        """The shortcut up to the input of its projection's final norm, and that norm (or None).

        A projection with hooks of its own runs whole (its hooks see its output) and fuses nothing.
        """
        ds = getattr(self, attr) if attr is not None else None
        if ds is None:
            return x, None
        if (
            isinstance(ds, nn.Sequential)
            and len(ds) > 0
            and merge.fusable_norm(ds[-1])
            and not merge.has_hooks(ds)
        ):
            layers = list(ds)
            for layer in layers[:-1]:
                x = layer(x)
            return x, layers[-1]
        return ds(x), None

    def extra_repr(self) -> str:
        norm = self.arl_normalization
        name = norm if isinstance(norm, str) else getattr(norm, "__name__", repr(norm))
        return f"normalization={name!r}"


def is_arl_block(module: nn.Module) -> bool:
    """True if ``module`` is a converted ARL block."""
    return isinstance(module, ARLBlock)


def _check_alpha(alpha_init: float) -> float:
    if isinstance(alpha_init, bool) or not isinstance(alpha_init, numbers.Real):
        raise TypeError(f"alpha_init must be a real number, got {type(alpha_init).__name__}")
    if not math.isfinite(alpha_init):
        raise ValueError(f"alpha_init must be finite, got {alpha_init}")
    return float(alpha_init)


def _convert_block_(
    block: nn.Module, normalization: str | NormalizationFn, alpha_init: float
) -> nn.Module:
    base = type(block)
    ref = next(iter(block.parameters()), None)
    factory = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
    block.__class__ = _subclass(ARLBlock, base)  # same object, ARL forward (ARLBlock comes first)
    block.alpha = nn.Parameter(torch.tensor(alpha_init, **factory))
    block.attn_map = nn.Identity()
    block.arl_normalization = normalization
    merge.prepare_merge_kernels()  # build the fused CPU kernels now, not inside a training step
    return block


def convert_block(
    block: nn.Module,
    normalization: str | NormalizationFn = "spatial",
    alpha_init: float = 1e-3,
    *,
    inplace: bool = False,
) -> nn.Module:
    """Convert one residual block into an ARL block (a copy unless ``inplace``).

    Raises:
        TypeError: the block type is not supported (see :func:`list_arl_block_types`).
        ValueError: the block is already an ARL block, an unknown normalization, a non-finite alpha.
    """
    if is_arl_block(block):
        raise ValueError(f"{type(block).__name__} is already an ARL block")
    if type(block) not in _BLOCK_SPECS:
        raise TypeError(
            f"cannot convert {type(block).__name__}: supported block types are {list_arl_block_types()}"
        )
    reason = _no_skip(block)
    if reason is not None:
        raise ValueError(f"cannot convert {type(block).__name__}: {reason}; ARL needs a shortcut")
    get_normalization(normalization)
    alpha_init = _check_alpha(alpha_init)
    block = block if inplace else copy.deepcopy(block)
    return _convert_block_(block, normalization, alpha_init)


# --- the model -------------------------------------------------------------------------------------


def _no_skip(block: nn.Module) -> str | None:
    """Why a registered block instance has no skip connection (it stays plain), or None."""
    spec = _BLOCK_SPECS[type(block)]
    return None if spec.no_skip is None else spec.no_skip(block)


class ARLWrapper(_Rebuildable, nn.Module):
    """Convert a residual network into an ARL network, keeping every weight.

    ``ARLWrapper(model)`` returns the converted model: a copy of ``model`` (or ``model`` itself with
    ``inplace=True``) whose class is ``ARL<ModelClass>``, a subclass of both this class and the model's
    own class. It computes what the source model computes, through the same ``forward`` and timm API,
    with every recognised residual block turned into an ARL block.

    How: nothing is wrapped. ``ARLWrapper(...)`` runs :meth:`__new__`, which converts the blocks in
    place (each block's ``__class__`` is reassigned to ``ARL<BlockClass>``, a subclass of
    :class:`ARLBlock` and of the block's class, and the block gains ``alpha`` and ``attn_map``), then
    reassigns the model's own ``__class__`` to ``ARL<ModelClass>`` (a subclass of this class and of
    the model's class, made once per model class) and returns the model object itself. Python then
    calls ``__init__`` on that object, which does nothing: the model is already initialised. The
    object keeps its ``__dict__`` (submodules, parameters, buffers, timm attributes), so
    ``isinstance(model, ModelClass)`` holds and the state-dict keys stay the source's; the methods
    of this class (:meth:`alphas`, :meth:`unwrap`, ...) come first in the method resolution order.
    Pickling and deep copies rebuild the dynamic classes (``__reduce_ex__``), and :meth:`unwrap`
    assigns the plain classes back on a copy.

    Args:
        model: a timm or torchvision residual CNN: ResNet (ResNeXt, wide, SE/ECA, d/s/t stems,
            blur/aa), ResNetV2 (pre-activation), EfficientNet/-Lite/V2, MobileNetV2/V3/V4, ConvNeXt,
            RegNetX/Y, their ``features_only`` models, or any model built from registered blocks
            (:func:`register_arl_block`). Blocks without a skip connection (a stride or width
            change with no shortcut) stay plain and are listed in ``conversion_report.skipped``.
        normalization: ``"spatial"`` (paper default), ``"channel"``, ``"sigmoid"``, a registered name or
            a callable.
        alpha_init: initial value of every block's scale gate (paper: 1e-3; 0 reproduces the source).
        blocks: which blocks to convert: ``None`` (all), block names or prefixes (``"layer4"``,
            ``"layer3.5"``), or a predicate ``(name, module) -> bool``.
        inplace: convert ``model`` itself instead of a deep copy.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or has no convertible block; ``blocks`` is
            none of the accepted kinds (``blocks=5``); ``alpha_init`` is not a real number.
        ValueError: ``model`` is already converted, unknown normalization, non-finite ``alpha_init``,
            a ``blocks`` entry that matches no block, or a ``blocks`` that selects nothing
            (``[]``, a predicate false for every block): a conversion of nothing is refused.

    Example:
        >>> import timm, torch, attnblocks as ab
        >>> m = ab.ARLWrapper(timm.create_model("resnet18", num_classes=2))
        >>> sorted(m.alphas())[:2]
        ['layer1.0', 'layer1.1']
    """

    conversion_report: ConversionReport

    def __new__(
        cls,
        model: nn.Module,
        normalization: str | NormalizationFn = "spatial",
        alpha_init: float = 1e-3,
        blocks: Iterable[str] | Callable[[str, nn.Module], bool] | None = None,
        *,
        inplace: bool = False,
    ) -> ARLWrapper:
        if not isinstance(model, nn.Module):
            raise TypeError(f"ARLWrapper expects an nn.Module, got {type(model).__name__}")
        if not isinstance(inplace, bool):
            raise TypeError(f"ARLWrapper: inplace must be True or False, got {inplace!r}")
        if isinstance(model, ARLWrapper) or any(is_arl_block(m) for m in model.modules()):
            raise ValueError(
                f"{type(model).__name__} already contains ARL blocks; converting twice is not supported"
                " (call .unwrap() first to get the plain model back)"
            )
        get_normalization(normalization)
        alpha_init = _check_alpha(alpha_init)

        registered = [(n, m) for n, m in model.named_modules() if type(m) in _BLOCK_SPECS]
        no_skip = {n: r for n, m in registered if (r := _no_skip(m)) is not None}
        candidates = [(n, m) for n, m in registered if n not in no_skip]
        if not candidates:
            found = sorted(
                {type(m).__name__ for m in model.modules() if any(True for _ in m.children())}
                - {"Sequential", "ModuleList", "ModuleDict", type(model).__name__}
            )
            without = f" ({len(no_skip)} blocks without a skip connection)" if no_skip else ""
            raise TypeError(
                f"{type(model).__name__} has no residual block that ARL can convert{without}; it "
                f"contains {found or 'no composite module'}; supported block types: "
                f"{list_arl_block_types()}"
            )
        chosen = select_blocks(candidates, blocks)

        model = model if inplace else copy.deepcopy(model)
        norm_name = (
            normalization
            if isinstance(normalization, str)
            else getattr(normalization, "__name__", repr(normalization))
        )
        report = ConversionReport(type(model).__name__, norm_name, alpha_init)
        unsupported = unsupported_blocks(model, is_arl_block)
        for name, module in model.named_modules():
            if name in no_skip:
                report.skipped[name] = no_skip[name]
            elif type(module) in _BLOCK_SPECS:
                if name in chosen:
                    _convert_block_(module, normalization, alpha_init)
                    report.converted.append(name)
                    report.new_keys.append(f"{name}.alpha")
                else:
                    report.skipped[name] = "not selected"
            elif name in unsupported:
                report.skipped[name] = unsupported[name]
        # The conversion is a class swap, not a wrapper: the model object becomes an instance of
        # ARL<ModelClass> (this class + its own class) and is returned as it is; see the docstring.
        model.__class__ = _subclass(ARLWrapper, type(model))
        model.conversion_report = report
        return model  # type: ignore[return-value]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Everything happens in __new__; the source model is already initialised.
        pass

    def arl_blocks(self) -> dict[str, nn.Module]:
        """The converted blocks by name."""
        return {n: m for n, m in self.named_modules() if is_arl_block(m)}

    def alphas(self) -> dict[str, Tensor]:
        """Current scale gates by block name (detached copies)."""
        return {n: m.alpha.detach().clone() for n, m in self.arl_blocks().items()}

    def unwrap(self) -> nn.Module:
        """A plain copy of the source architecture, with the current weights (alphas dropped)."""
        plain = copy.deepcopy(self)
        for module in plain.modules():
            if is_arl_block(module):
                del module.alpha, module.attn_map, module.arl_normalization
                module.__class__ = module._arl_base
        plain.__dict__.pop("conversion_report", None)
        plain.__class__ = self._arl_base
        return plain
