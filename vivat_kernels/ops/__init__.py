"""Op registration: one file per op, each a ``torch.library.custom_op`` with autograd and fake."""

from .group_norm import fused_group_norm
from .reflect_conv import reflect_conv2d

__all__ = ["fused_group_norm", "reflect_conv2d"]
