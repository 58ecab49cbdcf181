// Declarations of the C++ (CPU) kernels; bindings.cpp exposes them to Python.
#pragma once
#include <torch/extension.h>

#include <tuple>
#include <vector>

// Fused GroupNorm family, see vivat_kernels/ops/group_norm.py for the contract.
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_fwd(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta, int64_t num_groups,
    double eps, bool silu);

std::tuple<c10::optional<at::Tensor>, c10::optional<at::Tensor>, c10::optional<at::Tensor>,
           c10::optional<at::Tensor>, c10::optional<at::Tensor>>
group_norm_bwd(const at::Tensor& dy, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
               const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& gamma,
               const c10::optional<at::Tensor>& beta, const at::Tensor& mean, const at::Tensor& rstd,
               int64_t num_groups, double eps, bool silu, const std::vector<bool>& mask);

// Border terms of the reflect-padded conv2d, see vivat_kernels/ops/reflect_conv.py for the contract.
// pad4 = (left, right, top, bottom); positions are int32 (P, 2) (row, col) lists.
void reflect_conv2d_border_fwd(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                               at::Tensor& y, const at::Tensor& out_pos, int64_t stride,
                               const std::vector<int64_t>& pad4, int64_t ho_cov, int64_t wo_cov);
void reflect_conv2d_border_dgrad(const at::Tensor& dy, const at::Tensor& weight, at::Tensor& dx,
                                 const at::Tensor& src_pos, int64_t stride, const std::vector<int64_t>& pad4,
                                 int64_t ho_cov, int64_t wo_cov);
at::Tensor reflect_conv2d_border_wgrad(const at::Tensor& dy, const at::Tensor& x, int64_t kh, int64_t kw,
                                       const at::Tensor& out_pos, int64_t stride, const std::vector<int64_t>& pad4,
                                       int64_t ho_cov, int64_t wo_cov);
