"""Training and evaluation loops shared by every ISIC example script.

The engine knows nothing about ISIC: it trains ``model`` with ``loss_fn(batch, output, model)``,
an optimizer and an optional epoch scheduler, scores the validation set with ``metric_fn(probs,
targets)`` and keeps the best checkpoint by ``monitor``. An extra training-time loss (a regularizer
on attention maps, CARE's Grad-CAM term) is simply part of ``loss_fn``.

What it takes care of: AMP (bf16 on CPU; fp16 with a GradScaler or bf16 on CUDA), channels_last,
``torch.compile``, tqdm progress with loss and throughput, a per-epoch ``log.csv`` and TensorBoard
events, atomic checkpoints (``last.pt`` every epoch, ``best.pt`` on improvement) holding the model,
optimizer, scheduler, scaler, epoch, early-stopping state and RNG states, exact resumption, a clear
stop on a non-finite loss, and DDP under ``torchrun``.

Determinism: every epoch starts by seeding python, numpy and torch from ``(seed, epoch)`` and calling
``set_epoch`` on the train sampler, so a run resumed from ``last.pt`` replays the same batches and
augmentations and (on CPU) ends with the same weights as an uninterrupted run.

Scoring a loader (:func:`~examples.isic.train.predict.predict`) lives in
:mod:`examples.isic.train.predict`, saving and resuming checkpoints in
:mod:`examples.isic.train.checkpointing`, ``log.csv`` and TensorBoard in
:mod:`examples.isic.train.run_log`; the device, autocast and atomic writes come from
:mod:`examples.run`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from examples.run import atomic_save, autocast, check_amp, seed_everything

from .checkpointing import CheckpointMixin, unwrap_model
from .distributed import DistInfo, broadcast_buffers, reduce_sum
from .predict import NonFiniteError, Predictions, default_forward, move_to, predict, softmax_probs
from .run_log import RunLog

__all__ = ["NonFiniteLossError", "Trainer"]

LossOutput = torch.Tensor | tuple[torch.Tensor, Mapping[str, float | torch.Tensor]]
LossFn = Callable[[dict, Any, nn.Module], LossOutput]
ForwardFn = Callable[[nn.Module, dict], Any]
MetricFn = Callable[[np.ndarray, np.ndarray], Mapping[str, float]]


class NonFiniteLossError(NonFiniteError):
    """Raised when a training loss is NaN or infinite; the last good checkpoint is left intact."""


class Trainer(CheckpointMixin):
    """Epoch loop with validation, logging, checkpoints, early stopping and resumption.

    Saving and resuming (``state_dict``, ``check_config``, ``restore_training_state`` and
    ``load_tested``) come from :class:`~examples.isic.train.checkpointing.CheckpointMixin`.

    Args:
        model: the network (on any device; moved to ``device``).
        loss_fn: ``loss_fn(batch, output, model) -> loss`` or ``(loss, {name: part})``; the parts
            are logged. ``batch`` is the loader's dict on ``device``; ``output`` what ``forward``
            returned; ``model`` the training model (DDP-wrapped under torchrun).
        optimizer: built on ``model``'s parameters.
        out_dir: run folder; writes ``log.csv``, ``tb/`` and ``checkpoints/{last,best}.pt``.
        device: where to train.
        scheduler: an epoch-level LR scheduler (``step()`` once per epoch), or a timm scheduler
            (``timm.scheduler``: ``step_update(num_updates)`` after every optimizer step and
            ``step(epoch + 1)`` after every epoch), or None.
        metric_fn: ``metric_fn(probs, targets) -> {name: value}`` for the validation set.
        monitor: the key of ``metric_fn``'s output that selects ``best.pt`` (higher is better).
        forward: ``forward(model, batch) -> output`` (default ``model(batch["image"])``).
        to_probs: output -> (N, K) probabilities for evaluation (default softmax of the logits).
        amp: ``"none"``, ``"bf16"`` or ``"fp16"`` (fp16 uses a GradScaler, CUDA only).
        channels_last: train with NHWC model weights and inputs.
        compile: wrap the training forward in ``torch.compile``.
        seed: base seed; epoch ``e`` starts from ``seed_everything(seed * 1000 + e)``.
        patience: stop after this many epochs without improvement of ``monitor`` (None: never).
        grad_clip: clip the global gradient norm to this value (None: no clipping).
        epoch_log: ``epoch_log(model) -> {name: value}`` extra columns per epoch (e.g. ARL alphas).
        run_config: the settings a resumed run must share with its checkpoint (``{name: value}``,
            chosen by the caller), stored in every checkpoint; ``resume`` refuses a checkpoint
            whose values differ on any of them.
        resume_defaults: for settings added after older checkpoints were written, the value that
            reproduces those runs (``{"recipe": "paper"}``): a checkpoint without the setting
            resumes when the run has that value.
        dist_info: rank/world of this process (see
            :func:`~examples.isic.train.distributed.init_distributed`).
        progress: show tqdm bars (rank 0 only).
        ema_decay: keep an exponential moving average of the weights (``timm.utils.ModelEmaV3``
            with its warm-up, decay capped at this value), updated after every optimizer step.
            The EMA weights are validated, saved (``ema`` in the checkpoints, so a resumed run
            continues it exactly) and loaded by :meth:`load_tested` for testing. None: no EMA.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        out_dir: str | os.PathLike,
        device: torch.device,
        *,
        scheduler: Any = None,
        metric_fn: MetricFn | None = None,
        monitor: str = "mean_auc",
        forward: ForwardFn = default_forward,
        to_probs: Callable[[Any], torch.Tensor] = softmax_probs,
        amp: str = "none",
        channels_last: bool = False,
        compile: bool = False,
        seed: int = 0,
        patience: int | None = None,
        grad_clip: float | None = None,
        epoch_log: Callable[[nn.Module], Mapping[str, float]] | None = None,
        run_config: Mapping[str, Any] | None = None,
        resume_defaults: Mapping[str, Any] | None = None,
        dist_info: DistInfo | None = None,
        progress: bool = True,
        ema_decay: float | None = None,
    ) -> None:
        check_amp(amp, device)
        self.device, self.amp, self.channels_last = device, amp, channels_last
        self.dist_info = dist_info or DistInfo()
        self.module = model.to(device)
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        train_model: nn.Module = self.module
        if self.dist_info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = (
                [device.index if device.index is not None else 0] if device.type == "cuda" else None
            )
            train_model = DDP(train_model, device_ids=ids)
        if compile:
            train_model = torch.compile(train_model)
        self.model = train_model
        self.ema = None
        if ema_decay is not None:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.module, decay=ema_decay, use_warmup=True)
        self.global_step = 0  # optimizer steps so far (the timm scheduler's and EMA's clock)
        self.loss_fn, self.optimizer, self.scheduler = loss_fn, optimizer, scheduler
        self.metric_fn, self.monitor = metric_fn, monitor
        self.forward, self.to_probs = forward, to_probs
        self.seed, self.patience, self.grad_clip = seed, patience, grad_clip
        self.epoch_log = epoch_log
        self.run_config = dict(run_config or {})
        self.resume_defaults = dict(resume_defaults or {})
        self.progress = progress
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.start_epoch = 0
        self.best_metric = -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.saved_epoch: int | None = None  # epoch of the last checkpoint written or loaded
        self._epoch: int | None = None  # the epoch being trained, for error messages
        self._steps = 0  # training steps of the last epoch
        self.run_log = RunLog(self.out_dir)

    def _divergence_help(self) -> str:
        """Where the last good weights are and what to try, for a divergence message."""
        if self.saved_epoch is None:
            where = "no checkpoint has been written yet"
        else:
            where = (
                f"the last good checkpoint is {self.ckpt_dir / 'last.pt'} "
                f"(end of epoch {self.saved_epoch}), left as it was"
            )
        lr = self.optimizer.param_groups[0]["lr"]
        hint = f"lower --lr (now {lr:g})"
        if self.amp != "none":
            hint += f" or try --amp none (now {self.amp})"
        return f"{where}; {hint} and start again in another --out"

    # ------------------------------------------------------------------ loops
    def _loss(self, batch: dict, output: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss tensor and ``{"loss": value, part: value, ...}`` as Python floats.

        The loss and every tensor part are read back in one device-to-host copy (one sync per
        step, however many parts are logged).
        """
        result = self.loss_fn(batch, output, self.model)
        loss, parts = result if isinstance(result, tuple) else (result, {})
        scalars = [loss, *parts.values()]
        values = torch.stack(
            [torch.as_tensor(v, device=loss.device).detach().double().reshape(()) for v in scalars]
        ).tolist()
        return loss, dict(zip(["loss", *parts], values, strict=True))

    def train_one_epoch(self, loader: Iterable[dict], epoch: int) -> dict[str, float]:
        """One pass over ``loader``; returns the sample-weighted mean loss (and parts) and images/s."""
        from tqdm.auto import tqdm

        self.model.train()
        totals: dict[str, float] = {}
        seen, start, step = 0, time.perf_counter(), -1
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}",
            leave=False,
            disable=not (self.progress and self.dist_info.is_main),
        )
        for step, batch in enumerate(bar):
            batch = move_to(batch, self.device, self.channels_last)
            n = batch["image"].shape[0]
            with autocast(self.device, self.amp):
                output = self.forward(self.model, batch)
                loss, values = self._loss(batch, output)
            finite = float(math.isfinite(values["loss"]))
            if self.dist_info.enabled:
                finite = reduce_sum([finite], self.dist_info)[0] / self.dist_info.world_size
            if finite < 1:
                parts = {k: v for k, v in values.items() if k != "loss"}
                raise NonFiniteLossError(
                    f"training diverged: non-finite training loss {values['loss']} at epoch "
                    f"{epoch}, step {step}{f' (parts: {parts})' if parts else ''}; "
                    f"{self._divergence_help()}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.global_step += 1
            if hasattr(self.scheduler, "step_update"):  # a timm scheduler: per-step schedule
                self.scheduler.step_update(num_updates=self.global_step)
            if self.ema is not None:
                self.ema.update(self.module, step=self.global_step)
            seen += n
            for k, v in values.items():
                totals[k] = totals.get(k, 0.0) + v * n
            rate = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{totals['loss'] / seen:.4f}", img_s=f"{rate:.1f}")
        broadcast_buffers(self.module, self.dist_info)  # validate and save one model on every rank
        if self.ema is not None:
            broadcast_buffers(self.ema.module, self.dist_info)
        keys = sorted(totals)
        summed = reduce_sum([totals[k] for k in keys] + [float(seen)], self.dist_info)
        if summed[-1] == 0:
            size = getattr(loader, "batch_size", None)
            why = f" (batch size {size}, fewer training images than that?)" if size else ""
            raise ValueError(
                f"epoch {epoch} trained on no batch: the training loader is empty{why}"
            )
        self._steps = step + 1
        count = max(summed[-1], 1.0)
        stats = {f"train_{k}": v / count for k, v in zip(keys, summed[:-1], strict=True)}
        stats["train_img_s"] = summed[-1] / max(time.perf_counter() - start, 1e-9)
        return stats

    def evaluate(self, loader: Iterable[dict], desc: str = "val") -> tuple[Predictions, dict]:
        """Predictions and ``metric_fn`` metrics of the unwrapped model on ``loader``.

        Non-finite predictions raise :class:`NonFiniteError` before ``metric_fn`` sees them.
        """
        preds = self.predict(loader, desc)
        metrics = dict(self.metric_fn(preds.probs, preds.targets)) if self.metric_fn else {}
        return preds, metrics

    def predict(self, loader: Iterable[dict], desc: str = "test") -> Predictions:
        """:func:`~examples.isic.train.predict.predict` with this trainer's settings; non-finite
        predictions raise :class:`NonFiniteError` naming the epoch and the last good checkpoint."""
        try:
            return self._predict(loader, desc)
        except NonFiniteError as err:
            epoch = self._epoch
            at = (
                ""
                if epoch is None
                else f" at epoch {epoch} (evaluated after step {self._steps - 1})"
            )
            raise NonFiniteError(
                f"training diverged{at}: {err}; {self._divergence_help()}"
            ) from None

    @property
    def eval_module(self) -> nn.Module:
        """The weights that are validated and tested: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.module

    def _predict(self, loader: Iterable[dict], desc: str) -> Predictions:
        return predict(
            self.eval_module,
            loader,
            self.device,
            forward=self.forward,
            to_probs=self.to_probs,
            amp=self.amp,
            channels_last=self.channels_last,
            dist_info=self.dist_info,
            progress=self.progress,
            desc=desc,
        )

    def fit(
        self,
        train_loader: Iterable[dict],
        val_loader: Iterable[dict] | None,
        epochs: int,
        *,
        resume: bool = False,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Train up to ``epochs`` epochs (counting those already done when resuming).

        Each epoch: train, validate, step the scheduler, log a row (``log.csv``, TensorBoard),
        write ``last.pt`` (and ``best.pt`` when ``monitor`` improved), then stop early after
        ``patience`` epochs without improvement. Returns the history (one dict per epoch).
        """
        if resume:
            self.restore_training_state(self.ckpt_dir / "last.pt")
            self.saved_epoch = self.start_epoch - 1
            if self.dist_info.is_main and self.history:  # log.csv may be ahead of or behind last.pt
                self.run_log.write_csv(self.history)
        if self.patience is not None and self.bad_epochs >= self.patience:
            return self.history
        for epoch in range(self.start_epoch, epochs):
            seed_everything(self.seed * 1000 + epoch)
            sampler = getattr(train_loader, "sampler", None)
            for obj in (sampler, getattr(train_loader, "batch_sampler", None)):
                if hasattr(obj, "set_epoch"):
                    obj.set_epoch(epoch)
            t0 = time.perf_counter()
            self._epoch = epoch
            row: dict[str, Any] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
            row.update(self.train_one_epoch(train_loader, epoch))
            if val_loader is not None:
                _, metrics = self.evaluate(val_loader)
                row.update({f"val_{k}": v for k, v in metrics.items()})
            if self.epoch_log is not None:
                row.update(self.epoch_log(unwrap_model(self.module)))
            if hasattr(self.scheduler, "step_update"):
                self.scheduler.step(epoch + 1)
            elif self.scheduler is not None:
                self.scheduler.step()
            row["epoch_s"] = time.perf_counter() - t0
            score = row.get(f"val_{self.monitor}", -math.inf if val_loader is not None else epoch)
            improved = score is not None and not math.isnan(score) and score > self.best_metric
            if improved:
                self.best_metric, self.best_epoch, self.bad_epochs = float(score), epoch, 0
            else:
                self.bad_epochs += 1
            row["best"] = improved
            self.history.append(row)
            if self.dist_info.is_main:
                # checkpoints first (best before last: last.pt never names a best epoch that
                # best.pt lacks), then the log: log.csv never runs ahead of last.pt
                state = self.state_dict(epoch)
                if improved:
                    atomic_save(state, self.ckpt_dir / "best.pt")
                atomic_save(state, self.ckpt_dir / "last.pt")
                self.saved_epoch = epoch
                self.run_log.add_row(self.history)
            self.dist_info.barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
            if self.patience is not None and self.bad_epochs >= self.patience:
                break
        self._epoch = None
        self.run_log.flush()
        return self.history
