"""Focal losses (Lin et al., ICCV 2017) and the Dice attention regularizer of AttnMel (IPMI 2019).

Focal loss, per element with true-class probability ``p_t``:

.. code-block:: text

    FL(p_t) = -alpha_t * (1 - p_t)^gamma * log(p_t)

``alpha_t`` is applied *outside* ``p_t`` (the AttnMel reference folds class weights into the
probability, which is a different loss). With ``gamma = 0`` and ``alpha = None`` the softmax form is
exactly cross-entropy.

Dice attention regularizer, for attention maps ``A_i`` in [0, 1] and reference masks average-pooled
to each map's size ``M_i``:

.. code-block:: text

    L = sum_i lambda_i * (1 - Dice(A_i, M_i)),     Dice(A, M) = 2 * sum(A * M) / sum(A + M)

with the sums over the whole batch tensor (the paper's form) or per image and averaged.

This module gathers the losses in one import path; the focal losses live in
:mod:`attnblocks.focal` and the Dice regularizer in :mod:`attnblocks.dice`.
"""

from __future__ import annotations

from .dice import DiceAttentionRegularizer, soft_dice
from .focal import FocalLoss, focal_loss, sigmoid_focal_loss

__all__ = [
    "DiceAttentionRegularizer",
    "FocalLoss",
    "focal_loss",
    "sigmoid_focal_loss",
    "soft_dice",
]
