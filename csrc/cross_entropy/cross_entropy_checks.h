// Argument checks of the cross-entropy entry points (the contract in cross_entropy.h), shared by forward_backward_cpu
// and forward_backward_cuda. They guard the internal contract (eurokernels/ops validates and names the user's
// arguments). Host code on ATen only, no CPU-kernel headers: cross_entropy_cuda.cpp includes it too.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "common.h"

namespace eurokernels::cross_entropy {

// device: where logits must be (the kernel's device type).
inline void check_args(const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& lse_in,
                       const std::optional<at::Tensor>& row_scale, const std::optional<at::Tensor>& dlse,
                       const std::optional<at::Tensor>& grad_out, at::DeviceType device) {
  CHECK_DEVICE(logits, device);
  CHECK_DIM(logits, 2);
  CHECK_LASTDIM_CONTIGUOUS(logits);
  const int64_t rows = logits.size(0), n = logits.size(1);
  CHECK_DTYPE(labels, at::kLong);
  CHECK_CONTIGUOUS(labels);
  TORCH_CHECK(labels.numel() == rows, "labels must have ", rows, " elements");
  auto check_row_vector = [&](const std::optional<at::Tensor>& t, const char* name) {
    if (!t) return;
    CHECK_DTYPE(*t, at::kFloat);
    CHECK_CONTIGUOUS(*t);
    TORCH_CHECK(t->numel() == rows, name, " must have ", rows, " elements");
  };
  check_row_vector(lse_in, "lse_in");
  check_row_vector(row_scale, "row_scale");
  check_row_vector(dlse, "dlse");
  if (grad_out) {
    TORCH_CHECK(row_scale, "a gradient needs row_scale");
    TORCH_CHECK(grad_out->dim() == 2 && grad_out->size(0) == rows && grad_out->size(1) == n,
                "grad_out must be [", rows, ", ", n, "]");
    CHECK_LASTDIM_CONTIGUOUS(*grad_out);
    CHECK_DTYPE(*grad_out, logits.scalar_type());
  }
  TORCH_CHECK(lse_in || !dlse, "dlse is only used by the backward (with lse_in)");
}

}  // namespace eurokernels::cross_entropy
