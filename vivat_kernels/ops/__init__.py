"""Op registration: one file per op, each a ``torch.library.custom_op`` with autograd and fake."""

from .group_norm import fused_group_norm

__all__ = ["fused_group_norm"]
