// Softmax / log-softmax over the last dimension of a 2-D [rows, n] input with a unit stride along n (any row
// stride); outputs are fresh contiguous tensors. n == 0 gives an empty output and lse = -inf (logsumexp of nothing).
#pragma once
#include <ATen/ATen.h>
#include <tuple>

#include "common.h"

namespace eurokernels::softmax {

// -> (y, lse fp32 [rows])
std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& x, bool log);
std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& x, bool log);
// dy, x: [rows, n]; lse: the forward's [rows] fp32. p = exp(x - lse) is recomputed in fp32.
at::Tensor backward_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& lse, bool log);
at::Tensor backward_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& lse, bool log);

// The backward's arguments (x already checked to be 2-D): dy like x, lse one fp32 value per row.
inline void check_backward_args(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& lse) {
  const int64_t rows = x.size(0), n = x.size(1);
  check_rows(x, "x", rows, n);
  check_rows(dy, "dy", rows, n);
  CHECK_DTYPE(dy, x.scalar_type());
  CHECK_DTYPE(lse, at::kFloat);
  CHECK_CONTIGUOUS(lse);
  TORCH_CHECK(lse.numel() == rows, "lse must have ", rows, " elements");
}

}  // namespace eurokernels::softmax
