"""ISIC pipeline pieces: datasets, resized-image cache, the papers' transforms, samplers, synthetic
data and metrics (importable from the repository root: ``from examples.isic import ...``).

- ``data``: datasets (:class:`ISIC2016Dataset`, :class:`ISIC2017Dataset`,
  :class:`ISIC2018Dataset`), the ISIC 2018 lesion split, the resized-image cache, the papers'
  transforms, samplers and synthetic data (see :mod:`examples.isic.data`).
- ``eval``: binary / ISIC 2017 / multi-class metrics, bootstrap AUC intervals, sensitivity at
  fixed specificities, attention Jaccard, prediction CSVs, the printed tables and the plots.
- ``train``: the :class:`~examples.isic.train.Trainer`, checkpoints, ``torchrun`` helpers and
  ``--recipe paper|timm``.
- ``cli``: the common flags, the run folder, the device; ``weights``: weights files and input
  normalisation; ``data_root``: the checks of ``--data-root``.
"""

from .data import (
    ARL_SCALES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ISIC2017_TASKS,
    ARLPatchAugment,
    CentralPatchCrop,
    CentralSquareCrop,
    GrayWorld,
    ImageReadError,
    ISIC2016Dataset,
    ISIC2017Dataset,
    ISIC2018Dataset,
    ISICDataset,
    NineViews,
    OversamplingSampler,
    RandomRot90,
    ResizedImageCache,
    WeightedSampler,
    arl_test_transform,
    arl_train_transform,
    attnmel_eval_transform,
    attnmel_train_transform,
    class_balanced_weights,
    compute_mean_std,
    default_synthetic_root,
    get_or_make_split,
    gray_world,
    lesion_split,
    load_image,
    load_mask,
    make_synthetic_isic2017,
    oversample_indices,
    read_lesion_groups,
)
from .eval import (
    attention_jaccard,
    binary_metrics,
    isic2017_metrics,
    isic2017_scores,
    multiclass_metrics,
    write_predictions_csv,
)

__all__ = [
    "ARL_SCALES",
    "ARLPatchAugment",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ISIC2016Dataset",
    "ISIC2017Dataset",
    "ISIC2017_TASKS",
    "ISIC2018Dataset",
    "ISICDataset",
    "CentralPatchCrop",
    "CentralSquareCrop",
    "GrayWorld",
    "ImageReadError",
    "NineViews",
    "OversamplingSampler",
    "RandomRot90",
    "ResizedImageCache",
    "WeightedSampler",
    "arl_test_transform",
    "arl_train_transform",
    "attention_jaccard",
    "attnmel_eval_transform",
    "attnmel_train_transform",
    "binary_metrics",
    "class_balanced_weights",
    "compute_mean_std",
    "default_synthetic_root",
    "get_or_make_split",
    "gray_world",
    "isic2017_metrics",
    "isic2017_scores",
    "lesion_split",
    "load_image",
    "load_mask",
    "make_synthetic_isic2017",
    "multiclass_metrics",
    "oversample_indices",
    "read_lesion_groups",
    "write_predictions_csv",
]
