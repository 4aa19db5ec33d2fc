"""attnblocks: attention modules that plug into any backbone.

ARL (attention residual learning), grid attention gates (AttnMel), attention regularizers, focal
losses and CARE, with the tools to record and look at the attention they produce.
"""

from .normalize import get_normalization, list_normalizations, register_normalization
from .recorder import attention_taps, record_attention

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "attention_taps",
    "get_normalization",
    "list_normalizations",
    "register_normalization",
    "record_attention",
]
