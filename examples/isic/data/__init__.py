"""The data side of the ISIC pipelines (``from examples.isic.data import ...``; the same names are
importable from ``examples.isic``).

- ``datasets``: :class:`ISIC2016Dataset`, :class:`ISIC2017Dataset`, :class:`ISIC2018Dataset`
  (``base``: the shared :class:`ISICDataset` with ``subset``/``limit``/``sample``/``holdout``;
  ``subsets``: the rules choosing their images; ``layout``: reading the official CSVs and files).
- ``splits``: the lesion-grouped stratified split of ISIC 2018.
- ``images``: decoding images (JPEG draft mode) and lesion masks (any common encoding).
- ``cache``: :class:`ResizedImageCache` (decode once, atomic, invalidating).
- ``transforms``: the ARL / AttnMel pipelines, gray world, mean/std (``patches``: the geometric
  pieces -- central patches, 9 test views, AttnMel crops, rot90).
- ``sampling``: :class:`OversamplingSampler`, :class:`WeightedSampler` (DDP-aware).
- ``synthetic``: :func:`make_synthetic_isic2017`, :func:`default_synthetic_root`
  (``synthetic2018``: the ISIC 2018 counterpart).
"""

from .cache import ResizedImageCache
from .datasets import (
    ISIC2017_TASKS,
    ISIC2016Dataset,
    ISIC2017Dataset,
    ISIC2018Dataset,
    ISICDataset,
)
from .images import ImageReadError, load_image, load_mask
from .sampling import (
    OversamplingSampler,
    WeightedSampler,
    class_balanced_weights,
    oversample_indices,
)
from .splits import get_or_make_split, lesion_split, read_lesion_groups
from .synthetic import default_synthetic_root, make_synthetic_isic2017
from .transforms import (
    ARL_SCALES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ARLPatchAugment,
    CentralPatchCrop,
    CentralSquareCrop,
    GrayWorld,
    NineViews,
    RandomRot90,
    arl_test_transform,
    arl_train_transform,
    attnmel_eval_transform,
    attnmel_train_transform,
    compute_mean_std,
    gray_world,
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
    "attnmel_eval_transform",
    "attnmel_train_transform",
    "class_balanced_weights",
    "compute_mean_std",
    "default_synthetic_root",
    "get_or_make_split",
    "gray_world",
    "lesion_split",
    "load_image",
    "load_mask",
    "make_synthetic_isic2017",
    "oversample_indices",
    "read_lesion_groups",
]
