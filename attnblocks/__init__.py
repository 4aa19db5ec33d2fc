"""attnblocks: attention modules that plug into any backbone.

ARL (attention residual learning), grid attention gates (AttnMel), attention regularizers, focal
losses and CARE, with the tools to record and look at the attention they produce.
"""

from .arl import (
    ARLBlock,
    ARLWrapper,
    ConversionReport,
    convert_block,
    is_arl_block,
    list_arl_block_types,
    register_arl_block,
)
from .backbones import architecture_for_weights, convert_state_dict, load_backbone_weights
from .boxes import (
    box_to_inner_outer,
    boxes_from_masks,
    boxes_from_saliency,
    list_outer_weightings,
    list_saliency_methods,
    spectral_residual_saliency,
)
from .cam import class_activation_map, minmax_maps, overlay_maps, upsample_maps
from .care import CARE, CAREAttentionLoss, CAREOutput, care_attention_loss
from .checkpoint import LoadReport, load_checkpoint, read_state_dict
from .deploy import AttentionOutputs
from .dice import DiceAttentionRegularizer, soft_dice
from .focal import FocalLoss, focal_loss, sigmoid_focal_loss
from .gated import AttentionGatedNet, attnmel_vgg16, list_gated_heads
from .gradcam import grad_cam, grad_cam_from_activation
from .grid import GridAttentionGate, list_gate_normalizations
from .merge import get_merge_backend, list_merge_backends, set_merge_backend
from .models import arl_cnn14, arl_cnn50, arl_efficientnet_lite0, resnet14
from .normalize import get_normalization, list_normalizations, register_normalization
from .recorder import attention_taps, record_attention

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "get_merge_backend",
    "list_merge_backends",
    "set_merge_backend",
    "AttentionGatedNet",
    "AttentionOutputs",
    "DiceAttentionRegularizer",
    "FocalLoss",
    "GridAttentionGate",
    "architecture_for_weights",
    "attnmel_vgg16",
    "class_activation_map",
    "convert_state_dict",
    "focal_loss",
    "list_gate_normalizations",
    "list_gated_heads",
    "load_backbone_weights",
    "minmax_maps",
    "overlay_maps",
    "sigmoid_focal_loss",
    "soft_dice",
    "upsample_maps",
    "ARLBlock",
    "ARLWrapper",
    "ConversionReport",
    "LoadReport",
    "arl_cnn14",
    "arl_cnn50",
    "arl_efficientnet_lite0",
    "convert_block",
    "is_arl_block",
    "list_arl_block_types",
    "load_checkpoint",
    "read_state_dict",
    "register_arl_block",
    "resnet14",
    "attention_taps",
    "get_normalization",
    "list_normalizations",
    "register_normalization",
    "record_attention",
    "CARE",
    "CAREAttentionLoss",
    "CAREOutput",
    "box_to_inner_outer",
    "boxes_from_masks",
    "boxes_from_saliency",
    "care_attention_loss",
    "grad_cam",
    "grad_cam_from_activation",
    "list_outer_weightings",
    "list_saliency_methods",
    "spectral_residual_saliency",
]
