"""Loading plain-network checkpoints into converted (ARL) models.

A ResNet checkpoint written by timm or torchvision (they share the key layout), by ``torch.save`` of a
state dict or of a training checkpoint (PyTorch Lightning, DDP, ``torch.compile``), or as
``.safetensors``, loads into the ARL model in one call that says exactly which keys were new (the
alphas), missing, unexpected, re-initialised or skipped for their shape.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ._checks import check_flag

__all__ = ["LoadReport", "load_checkpoint", "load_state_dict_report", "read_state_dict"]

_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema")
_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadReport:
    """Outcome of :func:`load_checkpoint`."""

    path: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    #: non-classifier tensors skipped by ``strict=False`` for their shape:
    #: key -> (shape in the checkpoint, shape in the model)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    #: checkpoint keys outside ``prefix`` (other submodules of a training module), not loaded
    ignored: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def fmt(keys: list[str]) -> str:
            return (
                ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                or "-"
            )

        mismatched = [
            f"{k} (checkpoint {tuple(c)} vs model {tuple(m)})"
            for k, (c, m) in self.mismatched.items()
        ]
        return (
            f"loaded {len(self.loaded)} tensors from {self.path}\n"
            f"  new (kept their initial values): {fmt(self.new)}\n"
            f"  re-initialised (shape mismatch in the classifier): {fmt(self.reinitialized)}\n"
            f"  skipped (shape mismatch): {fmt(mismatched)}\n"
            f"  missing from the checkpoint: {fmt(self.missing)}\n"
            f"  unexpected in the checkpoint: {fmt(self.unexpected)}\n"
            f"  ignored (outside the prefix): {fmt(self.ignored)}"
        )


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return f"dict with keys {sorted(map(str, value))[:8]}"
    return type(value).__name__


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``.pth``/``.pt``/``.bin``/``.ckpt`` (``torch.save``) or ``.safetensors``.

    Training checkpoints holding the weights under ``state_dict`` (PyTorch Lightning) / ``model`` /
    ``model_state_dict`` / ``state_dict_ema`` / ``model_ema`` are unpacked, and ``module.`` (DDP) /
    ``_orig_mod.`` (torch.compile) prefixes removed. Files are read with ``weights_only=True``: no
    code from the file runs.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read as a checkpoint, or holds no state dict of tensors (the
            message names the first entry that is not a tensor).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated, corrupted or foreign file: say which and why
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights only load failed" in reason.lower():
            reason = (
                "it holds Python objects other than tensors (a pickled model?), and checkpoints "
                "are read with weights_only=True; save model.state_dict() instead"
            )
        raise ValueError(f"cannot read checkpoint {path}: {reason}") from err
    outer = state
    for key in _NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(
            f"{path} does not hold a state dict of tensors: it holds a {_describe(state)}"
        )
    if not state:
        raise ValueError(f"{path} does not hold a state dict of tensors: it holds an empty dict")
    bad = next(((k, v) for k, v in state.items() if not isinstance(v, Tensor)), None)
    if bad is not None:
        where = "" if state is outer else " (unpacked from a training checkpoint)"
        raise ValueError(
            f"{path} does not hold a state dict of tensors{where}: entry {bad[0]!r} is a "
            f"{_describe(bad[1])}; a training checkpoint must keep its weights under one of "
            f"{list(_NESTED_KEYS)}"
        )
    if not all(isinstance(k, str) for k in state):
        raise ValueError(f"{path} does not hold a state dict of tensors: its keys are not all str")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def _check_prefix(prefix: str | None) -> str | None:
    if prefix is None:
        return None
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str such as 'net.' or None, got {type(prefix).__name__}")
    stripped = prefix.strip(".")
    if not stripped:
        raise ValueError(f"prefix must name a submodule such as 'net.' or 'model.', got {prefix!r}")
    return stripped + "."


def _top_level(keys: list[str]) -> list[str]:
    return sorted({k.split(".", 1)[0] + "." for k in keys if "." in k})


def _select_prefix(
    state: dict[str, Tensor], prefix: str | None, source: str = "checkpoint"
) -> tuple[dict[str, Tensor], list[str]]:
    """The entries of ``state`` under ``prefix`` with the prefix removed, and the keys outside it.

    ``prefix`` names a submodule (``"net"`` and ``"net."`` are the same); a ``module.``/``_orig_mod.``
    at its start is dropped when the checkpoint's keys no longer carry it (``read_state_dict``
    removes them). ``None`` returns ``state`` unchanged.

    Raises:
        ValueError: no key of ``state`` starts with ``prefix``; the message lists the prefixes found.
    """
    prefix = _check_prefix(prefix)
    if prefix is None:
        return state, []
    candidates = [prefix]
    for wrapper in _PREFIXES:
        if prefix.startswith(wrapper):
            candidates.append(prefix[len(wrapper) :])
    for cand in candidates:
        if cand and any(k.startswith(cand) for k in state):
            kept = {k[len(cand) :]: v for k, v in state.items() if k.startswith(cand)}
            return kept, [k for k in state if not k.startswith(cand)]
    raise ValueError(
        f"prefix {prefix!r} matches no key of {source}; its keys start with "
        f"{_top_level(list(state))[:10] or sorted(state)[:5]}"
    )


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = {"fc.", "head.fc.", "classifier.", "head."}
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        clf = get_classifier()
        for name, module in model.named_modules():
            if module is clf and name:
                names.add(name + ".")
    return tuple(names)


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    prefix: str | None = None,
    new_keys_suffix: tuple[str, ...] = (".alpha",),
) -> LoadReport:
    """Load a plain-network checkpoint into ``model`` (typically an ARL model) and report the keys.

    Keys that ``model`` has and the checkpoint lacks are *new* when they end with one of
    ``new_keys_suffix`` (the ARL scale gates: they keep their initial values) and *missing* otherwise.
    Classifier tensors whose shape differs (an ImageNet head loaded into a 2-class model) are skipped
    and reported as re-initialised, as timm does when ``num_classes`` changes.

    Args:
        model: the model to load into.
        path: ``.pth``/``.pt``/``.bin``/``.ckpt``/``.safetensors`` file.
        strict: ``True`` (default) raises if any key is missing or unexpected, or a non-classifier
            shape differs. ``False`` loads what matches: missing and unexpected keys are reported,
            and tensors whose shape differs are skipped (the model keeps its own values) and listed
            in ``report.mismatched`` with both shapes.
        prefix: load only the checkpoint's entries under this submodule name, with it removed:
            ``"net."`` or ``"model."`` for a PyTorch Lightning module that holds the network as
            ``self.net``/``self.model`` (``"net"`` works too). Other entries (a loss's buffers) are
            listed in ``report.ignored``. A DDP ``module.`` is removed before, whatever ``prefix``.

    Returns:
        A :class:`LoadReport`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds no state dict of tensors; ``prefix`` matches no key; no tensor of
            the checkpoint fits the model (a wrong file or a missing ``prefix``: the message says
            which prefix would fit when one does); or (``strict``) keys or shapes do not match.
        TypeError: ``strict`` is not a bool or ``prefix`` not a str.
    """
    check_flag(strict, "strict")
    prefix = _check_prefix(prefix)
    state, ignored = _select_prefix(read_state_dict(path), prefix, str(path))
    report = load_state_dict_report(
        model, state, str(path), strict=strict, new_keys_suffix=new_keys_suffix
    )
    report.ignored = ignored
    return report


def _prefix_hint(own: dict[str, Tensor], state: dict[str, Tensor]) -> str:
    """Which submodule prefix of the checkpoint (or of the model) would make the keys meet."""
    best, best_hits = "", 0
    for pre in _top_level(list(state)):
        hits = sum(1 for k in state if k.startswith(pre) and k[len(pre) :] in own)
        if hits > best_hits:
            best, best_hits = pre, hits
    if best_hits:
        return f"; its keys under {best!r} fit the model: pass prefix={best!r}"
    for pre in _top_level(list(own)):
        if any(pre + k in own for k in state):
            return (
                f"; the checkpoint fits the model's submodule {pre!r}: load it into that "
                "submodule instead"
            )
    return ""


def load_state_dict_report(
    model: nn.Module,
    state: dict[str, Tensor],
    source: str,
    *,
    strict: bool = True,
    new_keys_suffix: tuple[str, ...] = (".alpha",),
    unexpected_ok: bool = False,
) -> LoadReport:
    """Load ``state`` into ``model`` as :func:`load_checkpoint` does, reading from memory.

    ``source`` names the state dict in messages and the report. With ``unexpected_ok``, keys the
    model lacks (an ImageNet head loaded into a pruned backbone) are reported but never an error.
    With ``strict=False``, non-classifier tensors whose shape differs are skipped and reported in
    ``report.mismatched``; with ``strict=True`` they raise. A state dict of which no tensor fits
    the model raises whatever ``strict`` is.
    """
    check_flag(strict, "strict")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    own = model.state_dict()
    report = LoadReport(source)
    clf = _classifier_prefixes(model)
    to_load: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            if key.startswith(clf):
                report.reinitialized.append(key)
            else:
                report.mismatched[key] = (tuple(value.shape), tuple(own[key].shape))
        else:
            to_load[key] = value
    for key in own:
        if key not in state:
            (report.new if key.endswith(new_keys_suffix) else report.missing).append(key)
    if not to_load:
        raise ValueError(
            f"no tensor of {source} fits {type(model).__name__}: {len(report.unexpected)} of its "
            f"{len(state)} keys are not in the model (first {sorted(report.unexpected)[:3]}), "
            f"{len(report.mismatched) + len(report.reinitialized)} differ in shape"
            + _prefix_hint(own, state)
        )
    if strict and report.mismatched:
        raise ValueError(
            f"shape mismatch loading {source} into {type(model).__name__} (pass strict=False to "
            "skip these tensors): "
            + "; ".join(
                f"{k}: checkpoint {c} vs model {m}"
                for k, (c, m) in list(report.mismatched.items())[:5]
            )
        )
    unexpected = [] if unexpected_ok else report.unexpected
    if strict and (report.missing or unexpected):
        raise ValueError(
            f"{source} does not match {type(model).__name__} (pass strict=False to load anyway): "
            f"missing {report.missing[:8]} ({len(report.missing)} in all), "
            f"unexpected {unexpected[:8]} ({len(unexpected)} in all)"
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    return report
