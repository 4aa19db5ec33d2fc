"""Training of the ISIC runs: the engine, its checkpoints, multi-process helpers and the recipes.

- :mod:`.trainer`: :class:`Trainer`, the epoch loop (AMP, channels_last, compile, EMA, early
  stopping, DDP under ``torchrun``).
- :mod:`.checkpointing`: what a checkpoint holds; :meth:`Trainer.restore_training_state`.
- :mod:`.run_log`: ``OUT/log.csv`` and TensorBoard.
- :mod:`.predict`: a model's probabilities over a loader, in dataset order.
- :mod:`.distributed`: :class:`DistInfo`, shard samplers and gathers.
- :mod:`.recipes`: ``--recipe paper|timm``.
"""

from .checkpointing import read_checkpoint
from .distributed import DistInfo, init_distributed, shard_loader
from .predict import NonFiniteError, Predictions, predict
from .trainer import NonFiniteLossError, Trainer

__all__ = [
    "DistInfo",
    "NonFiniteError",
    "NonFiniteLossError",
    "Predictions",
    "Trainer",
    "init_distributed",
    "predict",
    "read_checkpoint",
    "shard_loader",
]
