"""Loading plain-network checkpoints into converted (ARL) models.

A ResNet checkpoint written by timm or torchvision (they share the key layout), by ``torch.save`` of a
state dict or of a training checkpoint, or as ``.safetensors``, loads into the ARL model in one call
that says exactly which keys were new (the alphas), missing, unexpected or re-initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

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

    def __str__(self) -> str:
        def fmt(keys: list[str]) -> str:
            return (
                ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                or "-"
            )

        return (
            f"loaded {len(self.loaded)} tensors from {self.path}\n"
            f"  new (kept their initial values): {fmt(self.new)}\n"
            f"  re-initialised (shape mismatch in the classifier): {fmt(self.reinitialized)}\n"
            f"  missing from the checkpoint: {fmt(self.missing)}\n"
            f"  unexpected in the checkpoint: {fmt(self.unexpected)}"
        )


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``.pth``/``.pt``/``.bin`` (``torch.save``) or ``.safetensors``.

    Training checkpoints holding the weights under ``state_dict``/``model``/``model_state_dict``/
    ``state_dict_ema`` are unpacked, and ``module.`` (DDP) / ``_orig_mod.`` (torch.compile) prefixes
    removed. Files are read with ``weights_only=True``: no code from the file runs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in _NESTED_KEYS:
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


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
    new_keys_suffix: tuple[str, ...] = (".alpha",),
) -> LoadReport:
    """Load a plain-network checkpoint into ``model`` (typically an ARL model) and report the keys.

    Keys that ``model`` has and the checkpoint lacks are *new* when they end with one of
    ``new_keys_suffix`` (the ARL scale gates: they keep their initial values) and *missing* otherwise.
    Classifier tensors whose shape differs (an ImageNet head loaded into a 2-class model) are skipped
    and reported as re-initialised, as timm does when ``num_classes`` changes.

    Args:
        model: the model to load into.
        path: ``.pth``/``.pt``/``.bin``/``.safetensors`` file.
        strict: raise if any key is missing or unexpected, or a non-classifier shape differs.

    Returns:
        A :class:`LoadReport`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds no state dict, or (``strict``) keys or shapes do not match.
    """
    return load_state_dict_report(
        model, read_state_dict(path), str(path), strict=strict, new_keys_suffix=new_keys_suffix
    )


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
    """
    own = model.state_dict()
    report = LoadReport(source)
    clf = _classifier_prefixes(model)
    to_load: dict[str, Tensor] = {}
    bad_shapes: list[str] = []
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            if key.startswith(clf):
                report.reinitialized.append(key)
            else:
                bad_shapes.append(
                    f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
                )
        else:
            to_load[key] = value
    for key in own:
        if key not in state:
            (report.new if key.endswith(new_keys_suffix) else report.missing).append(key)
    if bad_shapes:
        raise ValueError(
            f"shape mismatch loading {source} into {type(model).__name__}: "
            + "; ".join(bad_shapes[:5])
        )
    unexpected = [] if unexpected_ok else report.unexpected
    if strict and (report.missing or unexpected):
        raise ValueError(
            f"{source} does not match {type(model).__name__} (pass strict=False to load anyway): "
            f"missing {report.missing[:8]} ({len(report.missing)} in all), "
            f"unexpected {unexpected[:8]}"
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    return report
