// Softmax / log-softmax over the last dimension of a 2-D [rows, n] input with a unit stride along n (any row
// stride); outputs are fresh contiguous tensors.
#pragma once
#include <ATen/ATen.h>
#include <tuple>

namespace eurokernels::softmax {

// -> (y, lse fp32 [rows])
std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& x, bool log);
// dy, x: [rows, n]; lse: the forward's [rows] fp32. p = exp(x - lse) is recomputed in fp32.
at::Tensor backward_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& lse, bool log);

}  // namespace eurokernels::softmax
