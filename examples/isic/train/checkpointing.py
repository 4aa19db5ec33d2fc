"""Checkpoints of the ISIC training engine: what they hold, how a run resumes from one.

A checkpoint (``last.pt`` every epoch, ``best.pt`` on improvement, both written with
:func:`examples.run.atomic_save`) holds the model, optimizer, scheduler and GradScaler states, the
optimizer step count and the EMA weights (when the run keeps an EMA), the epoch, the
early-stopping state, the history, the settings that must match on resume (``run_config``) and the
python, numpy, torch and CUDA RNG states, so that a resumed run replays exactly what an
uninterrupted one would.

:class:`CheckpointMixin` gives :class:`~examples.isic.train.trainer.Trainer` its ``state_dict``,
``check_config``, ``restore_training_state`` and ``load_tested`` methods. (Loading a network's
*weights* only is :func:`attnblocks.load_checkpoint`.)
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["CheckpointMixin", "config_differences", "read_checkpoint", "unwrap_model"]

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "best_metric",
                   "best_epoch", "bad_epochs", "history", "rng")  # fmt: skip


def read_checkpoint(path: str | os.PathLike, what: str = "--resume") -> dict[str, Any]:
    """Load a checkpoint written by the engine; ``ValueError`` naming ``what`` and the file when it
    is missing, truncated, corrupted or not one of the engine's checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # zip, pickle, EOF and unpickling errors all mean a damaged file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{what}: cannot read the checkpoint {path} (truncated or corrupted: {reason}); "
            "delete it and start again, or restore a copy"
        ) from err
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(
            f"{what}: {path} is not a checkpoint of these scripts (missing {missing[:4]})"
        )
    return state


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under ``torch.compile`` and DDP wrappers (in either order)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)


def config_differences(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    ignore: frozenset[str] | set[str] = frozenset(),
    added_defaults: Mapping[str, Any] | None = None,
) -> list[str]:
    """Sorted keys of ``current``, outside ``ignore``, on which ``saved`` differs.

    ``current`` names the settings that must match (the trainer's ``run_config``); what else
    ``saved`` holds does not count. A key that ``saved`` lacks while ``current`` holds ``None`` or
    ``False`` there, or its ``added_defaults`` value (the value that reproduces the runs written
    before the setting existed), is no difference either: a setting added after the checkpoint was
    written, left at its default, does not make the checkpoint another configuration.
    """
    added_defaults = added_defaults or {}
    keys = set(current) - set(ignore)
    new_defaults = {
        k
        for k in set(current) - set(saved)
        if current[k] is None or current[k] is False or added_defaults.get(k, ...) == current[k]
    }
    return sorted(k for k in keys - new_defaults if saved.get(k) != current.get(k))


class CheckpointMixin:
    """Saving and restoring a trainer's full state.

    The class using it sets ``module`` (the unwrapped model), ``optimizer``, ``scheduler`` (or
    None), ``scaler``, ``start_epoch``, ``best_metric``, ``best_epoch``, ``bad_epochs``,
    ``history``, ``run_config`` and ``ckpt_dir``.

    ``run_config`` holds the settings a resumed run must share with its checkpoint (the script
    chooses them: what the network, the data and the optimisation are, not where the run writes or
    how long it trains); ``resume_defaults`` the values of settings that older checkpoints predate
    (see :func:`config_differences`).
    """

    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    start_epoch: int
    best_metric: float
    best_epoch: int
    bad_epochs: int
    history: list[dict[str, Any]]
    run_config: dict[str, Any]
    resume_defaults: dict[str, Any]
    ckpt_dir: Path

    def state_dict(self, epoch: int) -> dict[str, Any]:
        """Everything a checkpoint written at the end of ``epoch`` holds."""
        return {
            "model": unwrap_model(self.module).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "run_config": self.run_config,
            "global_step": getattr(self, "global_step", 0),
            "ema": ema.module.state_dict()
            if (ema := getattr(self, "ema", None)) is not None
            else None,
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        }

    def check_config(self, saved: Mapping[str, Any], path: Path) -> None:
        """Raise ``ValueError`` naming every setting on which ``saved`` differs from this run."""
        diff = config_differences(saved, self.run_config, added_defaults=self.resume_defaults)
        if diff:
            lines = ", ".join(
                f"{k}: checkpoint {saved.get(k)!r} vs now {self.run_config.get(k)!r}" for k in diff
            )
            raise ValueError(f"--resume: {path} comes from another configuration ({lines})")

    def restore_training_state(self, path: str | os.PathLike) -> None:
        """Restore everything :meth:`state_dict` saved; training continues at the next epoch."""
        path = Path(path)
        state = read_checkpoint(path, "--resume")
        self.check_config(state.get("run_config", {}), path)
        unwrap_model(self.module).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.global_step = int(state.get("global_step", 0))
        ema = getattr(self, "ema", None)
        if ema is not None:
            if state.get("ema") is None:
                raise ValueError(f"--resume: {path} holds no EMA weights to continue")
            ema.module.load_state_dict(state["ema"])
        self.start_epoch = state["epoch"] + 1
        self.best_metric, self.best_epoch = state["best_metric"], state["best_epoch"]
        self.bad_epochs, self.history = state["bad_epochs"], list(state["history"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def load_tested(self, select: str = "best") -> int:
        """Load the weights the test set uses: ``best.pt`` (``select="best"``) or ``last.pt``
        (``"last"``: the end of the schedule); returns their epoch.

        With an EMA, the model takes the EMA weights (those validated). When the checkpoint was
        not written (no epoch improved, or none ran), the current weights (EMA ones) stay.
        """
        if select not in ("best", "last"):
            raise ValueError(f"select must be 'best' or 'last', got {select!r}")
        path = self.ckpt_dir / f"{select}.pt"
        ema = getattr(self, "ema", None)
        if path.is_file():
            state = read_checkpoint(path, f"the {select} checkpoint")
            weights = state["ema"] if ema is not None and state.get("ema") else state["model"]
            unwrap_model(self.module).load_state_dict(weights)
            if ema is not None:
                ema.module.load_state_dict(weights)
            return int(state["epoch"])
        if ema is not None:
            unwrap_model(self.module).load_state_dict(ema.module.state_dict())
        return self.start_epoch - 1
