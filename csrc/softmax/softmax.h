// Softmax / log-softmax over the last dimension of a 2-D [rows, n] input with a unit stride along n (any row
// stride); outputs are fresh contiguous tensors.
#pragma once
#include <ATen/ATen.h>

namespace eurokernels::softmax {

at::Tensor forward_cpu(const at::Tensor& x, bool log);
// dy, y: [rows, n]; y is the forward's output.
at::Tensor backward_cpu(const at::Tensor& dy, const at::Tensor& y, bool log);

}  // namespace eurokernels::softmax
