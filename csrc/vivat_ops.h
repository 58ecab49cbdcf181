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
