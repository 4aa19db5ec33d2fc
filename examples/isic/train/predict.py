"""Scoring a model over a loader: probabilities, targets and ids in dataset order.

- :func:`predict`: the model over a loader, views averaged, gathered in dataset order under DDP;
  non-finite predictions raise :class:`NonFiniteError`.
- :func:`move_to`: a (nested) batch to a device, 4-D float tensors optionally channels_last.
- :func:`default_forward`, :func:`softmax_probs`: the default forward pass and its probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from examples.run import RunError, autocast

from .distributed import DistInfo, all_gather_objects, unshard

__all__ = [
    "NonFiniteError",
    "Predictions",
    "default_forward",
    "move_to",
    "predict",
    "softmax_probs",
]

ForwardFn = Callable[[nn.Module, dict], Any]


class NonFiniteError(RunError):
    """A NaN or infinite loss or prediction: training diverged."""


def move_to(obj: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move every tensor of a (nested) batch to ``device``; 4-D float tensors optionally NHWC."""
    if isinstance(obj, torch.Tensor):
        obj = obj.to(device, non_blocking=True)
        if channels_last and obj.ndim == 4 and obj.is_floating_point():
            obj = obj.contiguous(memory_format=torch.channels_last)
        return obj
    if isinstance(obj, Mapping):
        return {k: move_to(v, device, channels_last) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(move_to(v, device, channels_last) for v in obj)
    return obj


def default_forward(model: nn.Module, batch: dict) -> torch.Tensor:
    """``model(batch["image"])``."""
    return model(batch["image"])


def softmax_probs(output: Any) -> torch.Tensor:
    """Class probabilities from logits (the first element when the output is a tuple)."""
    logits = output[0] if isinstance(output, tuple | list) else output
    return logits.float().softmax(dim=-1)


@dataclass
class Predictions:
    """Per-sample outputs of :func:`predict`, in dataset order.

    ``probs`` (N, K) float64 class probabilities (averaged over test views when the images came as
    (N, V, C, H, W)), ``targets`` (N, ...) the batches' ``label``, ``ids`` the batches' ``id``.
    """

    probs: np.ndarray
    targets: np.ndarray
    ids: list[str] = field(default_factory=list)


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable[dict],
    device: torch.device,
    *,
    forward: ForwardFn = default_forward,
    to_probs: Callable[[Any], torch.Tensor] = softmax_probs,
    amp: str = "none",
    channels_last: bool = False,
    dist_info: DistInfo | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> Predictions:
    """Run ``model`` over ``loader`` in eval mode and collect probabilities, targets and ids.

    Images of shape (N, V, C, H, W) are V views of each sample (e.g. the 9 test patches of ARL):
    they are scored as N*V images and the probabilities averaged over V. Under DDP, give the loader
    a :class:`~examples.isic.train.distributed.ShardSampler`; the pieces of every rank are gathered and put
    back in dataset order, so nothing is counted twice.
    """
    from tqdm.auto import tqdm

    dist_info = dist_info or DistInfo()
    was_training = model.training
    model.eval()
    probs, targets, ids = [], [], []
    bar = tqdm(loader, desc=desc, leave=False, disable=not (progress and dist_info.is_main))
    for batch in bar:
        image = batch["image"]
        n, views = image.shape[0], image.shape[1] if image.ndim == 5 else 1
        inputs = {**batch, "image": image.flatten(0, 1)} if image.ndim == 5 else batch
        inputs = move_to(inputs, device, channels_last)
        with autocast(device, amp):
            output = forward(model, inputs)
        probs.append(to_probs(output).float().reshape(n, views, -1).mean(dim=1))  # stays on device
        targets.append(torch.as_tensor(batch["label"]))  # the loader's copy: no device round trip
        ids.extend(str(i) for i in batch.get("id", [""] * n))
    model.train(was_training)
    if probs:  # one device-to-host copy for the whole loader
        local = (torch.cat(probs).cpu().double().numpy(), torch.cat(targets).cpu().numpy(), ids)
    else:  # a rank whose shard is empty
        local = (np.zeros((0, 0)), np.zeros(0), ids)
    pieces = all_gather_objects(local, dist_info)
    sizes = [len(piece[2]) for piece in pieces]
    if not sum(sizes):
        raise ValueError("predict: the loader yielded no samples")
    bad = [i for piece in pieces if len(piece[2]) for i, ok in
           zip(piece[2], np.isfinite(piece[0]).all(axis=1), strict=True) if not ok]  # fmt: skip
    if bad:  # the same answer on every rank: all of them raise
        raise NonFiniteError(
            f"non-finite {desc} predictions for {len(bad)} of {sum(sizes)} images "
            f"(first: {', '.join(bad[:3])})"
        )
    starts = np.cumsum([0, *sizes])
    # dataset position -> row of the rank-ordered concatenation (ShardSampler interleaves ranks)
    order = unshard([range(starts[r], starts[r + 1]) for r in range(len(pieces))])
    kept = [piece for piece in pieces if len(piece[2])]
    all_ids = [i for piece in kept for i in piece[2]]
    return Predictions(
        np.concatenate([piece[0] for piece in kept])[order],
        np.concatenate([piece[1] for piece in kept])[order],
        [all_ids[k] for k in order],
    )
