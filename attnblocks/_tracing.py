"""Whether code runs under ``torch.fx`` symbolic tracing (torchvision's feature extractor, timm's
``AttentionExtract(method="fx")``): then tensors are proxies, and shape checks or custom autograd ops
must step aside for plain tensor code."""

from __future__ import annotations

import torch.fx._symbolic_trace as _st

__all__ = ["is_symbolic_tracing"]

# torch >= 2.5 tells fx.symbolic_trace apart from torch.export; older versions only have is_fx_tracing.
is_symbolic_tracing = getattr(_st, "is_fx_symbolic_tracing", _st.is_fx_tracing)
