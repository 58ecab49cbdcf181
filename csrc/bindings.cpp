// Python bindings of the vivat_kernels C++ extension (one module for every op).
#include "vivat_ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vivat_kernels CPU kernels";
  m.def("group_norm_fwd", &group_norm_fwd, "fused GroupNorm / GN+SiLU / SCN forward");
  m.def("group_norm_bwd", &group_norm_bwd, "fused GroupNorm / GN+SiLU / SCN backward");
}
