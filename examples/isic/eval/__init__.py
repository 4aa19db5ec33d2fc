"""Evaluation of the ISIC runs: metrics, the papers' tables, prediction CSVs and figures.

- :mod:`.metrics`: binary / ISIC 2017 / multi-class metrics, sensitivity at fixed specificities.
- :mod:`.bootstrap`: stratified bootstrap confidence intervals of the AUC.
- :mod:`.attention`: the attention Jaccard with lesion masks (AttnMel Table 3).
- :mod:`.report`: the engine's ``metric_fn`` for ISIC 2017 and the printed tables.
- :mod:`.predictions_csv`: the official submission format.
- :mod:`.plots`: training curves, ARL alphas, overlays, confusion matrices (``OUT/plots``).
"""

from .attention import attention_jaccard
from .bootstrap import bootstrap_auc_ci, ci_method
from .metrics import (
    binary_metrics,
    isic2017_metrics,
    isic2017_scores,
    isic2017_tasks,
    multiclass_metrics,
    sensitivity_at_specificity,
)
from .predictions_csv import write_predictions_csv

__all__ = [
    "attention_jaccard",
    "binary_metrics",
    "bootstrap_auc_ci",
    "ci_method",
    "isic2017_metrics",
    "isic2017_scores",
    "isic2017_tasks",
    "multiclass_metrics",
    "sensitivity_at_specificity",
    "write_predictions_csv",
]
