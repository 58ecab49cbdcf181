// Python bindings of the vivat_kernels C++ extension (one module for every op).
#include "vivat_ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vivat_kernels CPU kernels";
  m.def("group_norm_fwd", &group_norm_fwd, "fused GroupNorm / GN+SiLU / SCN forward");
  m.def("group_norm_bwd", &group_norm_bwd, "fused GroupNorm / GN+SiLU / SCN backward");
  m.def("reflect_conv2d_border_fwd", &reflect_conv2d_border_fwd, "reflect conv2d: border terms added to y (in place)");
  m.def("reflect_conv2d_border_dgrad", &reflect_conv2d_border_dgrad, "reflect conv2d: border terms added to dx (in place)");
  m.def("reflect_conv2d_border_wgrad", &reflect_conv2d_border_wgrad, "reflect conv2d: border terms of dweight");
}
