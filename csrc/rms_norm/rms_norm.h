// RMSNorm entry points. Inputs are 2-D [rows, hidden] views with a unit stride along hidden (any row stride);
// outputs are fresh contiguous tensors. The Python op (eurokernels/ops/rms_norm.py) reshapes and validates.
#pragma once
#include <ATen/ATen.h>
#include <optional>
#include <tuple>

namespace eurokernels::rms_norm {

// -> (y, residual_out (empty when no residual), rstd fp32 [rows])
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                           const std::optional<at::Tensor>& residual, double eps,
                                                           double offset, int64_t casting);
// -> (dx, dw (empty when no weight)). h is the normalized input (x, or x + residual).
std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& dy, const at::Tensor& h,
                                                const std::optional<at::Tensor>& weight, const at::Tensor& rstd,
                                                const std::optional<at::Tensor>& dresidual_out, double offset);

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                            const std::optional<at::Tensor>& residual, double eps,
                                                            double offset, int64_t casting);
std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& dy, const at::Tensor& h,
                                                 const std::optional<at::Tensor>& weight, const at::Tensor& rstd,
                                                 const std::optional<at::Tensor>& dresidual_out, double offset);

}  // namespace eurokernels::rms_norm
