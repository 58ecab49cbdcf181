"""vivat_kernels: fused GroupNorm family and reflect-padded convolution for VAEs.

Ops (each a ``torch.library.custom_op`` with autograd, usable under ``torch.compile``):

* :func:`fused_group_norm` -- GN, GN + SiLU, and spatially conditional GN in one pass.
* :func:`reflect_conv2d` -- conv2d with reflect padding, without materialising the padded input.

:func:`patch` swaps the fused layers into an existing model (diffusers, LDM, FLUX) in place.

Backends: ``triton`` (GPU), ``cpp`` (CPU, JIT-built C++ extension), ``torch`` (eager reference).
Selection is automatic; see :func:`set_backend` and ``python -m vivat_kernels info``.
"""

from ._backend import BACKENDS, get_backend, set_backend, use_backend
from .ops import fused_group_norm, reflect_conv2d
from .patch import PatchReport, patch

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "PatchReport",
    "fused_group_norm",
    "get_backend",
    "patch",
    "reflect_conv2d",
    "set_backend",
    "use_backend",
    "__version__",
]
