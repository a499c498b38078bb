// Softmax / log-softmax CUDA entry points: validate, allocate, and launch on the current stream (same contract as
// the CPU ones in softmax.h). Compiled by g++ (torch headers here, not in the .cu, keeps nvcc fast).
#include <limits>

#include "common.h"
#include "cuda_utils_host.h"
#include "softmax/softmax.h"
#include "softmax/softmax_launch.h"

namespace eurokernels::softmax {

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& x, bool log) {
  CHECK_DEVICE(x, cuda::kDeviceType);
  CHECK_DIM(x, 2);
  const int64_t rows = x.size(0), n = x.size(1);
  check_rows(x, "x", rows, n);
  const cuda::DeviceGuard guard(x.device());
  at::Tensor y = at::empty({rows, n}, x.options());
  at::Tensor lse = at::empty({rows}, x.options().dtype(at::kFloat));
  if (rows == 0) return {y, lse};
  if (n == 0) return {y, lse.fill_(-std::numeric_limits<float>::infinity())};  // as torch.logsumexp

  ForwardParams p{};
  p.x = x.const_data_ptr();
  p.y = y.mutable_data_ptr();
  p.lse = lse.mutable_data_ptr<float>();
  p.rows = rows;
  p.n = n;
  p.stride_x = x.stride(0);
  p.log = log;
  p.dtype = cuda::dtype_of(x);
  launch_forward(p, cuda::current_stream());
  cuda::check_launch();
  return {y, lse};
}

at::Tensor backward_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& lse, bool log) {
  cuda::check_same_device(x, "x", {{&dy, "dy"}, {&lse, "lse"}});
  CHECK_DIM(x, 2);
  check_backward_args(dy, x, lse);
  const int64_t rows = x.size(0), n = x.size(1);
  const cuda::DeviceGuard guard(x.device());
  at::Tensor dx = at::empty({rows, n}, x.options());
  if (rows == 0 || n == 0) return dx;

  BackwardParams p{};
  p.dy = dy.const_data_ptr();
  p.x = x.const_data_ptr();
  p.lse = lse.const_data_ptr<float>();
  p.dx = dx.mutable_data_ptr();
  p.rows = rows;
  p.n = n;
  p.stride_dy = dy.stride(0);
  p.stride_x = x.stride(0);
  p.log = log;
  p.dtype = cuda::dtype_of(x);
  launch_backward(p, cuda::current_stream());
  cuda::check_launch();
  return dx;
}

}  // namespace eurokernels::softmax
