"""vivat_kernels: fused GroupNorm family and reflect-padded convolution for VAEs.

Ops (each a ``torch.library.custom_op`` with autograd, usable under ``torch.compile``):

* :func:`fused_group_norm` -- GN, GN + SiLU, and spatially conditional GN in one pass.

Backends: ``triton`` (GPU), ``cpp`` (CPU, JIT-built C++ extension), ``torch`` (eager reference).
Selection is automatic; see :func:`set_backend` and ``python -m vivat_kernels info``.
"""

from ._backend import BACKENDS, get_backend, set_backend, use_backend
from .ops import fused_group_norm

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "fused_group_norm",
    "get_backend",
    "set_backend",
    "use_backend",
    "__version__",
]
