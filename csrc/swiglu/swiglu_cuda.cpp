// SwiGLU / GeGLU CUDA entry points: validate, allocate, and launch on the current stream. Compiled by g++ (torch
// headers here, not in the .cu, keeps nvcc fast).

#include "common.h"
#include "cuda_utils_host.h"
#include "swiglu/swiglu.h"
#include "swiglu/swiglu_launch.h"

namespace eurokernels::swiglu {

at::Tensor forward_cuda(const at::Tensor& gate, const at::Tensor& up, int64_t activation) {
  check_inputs(gate, up, activation, cuda::kDeviceType);
  const cuda::DeviceGuard guard(gate.device());
  const int64_t rows = gate.size(0), n = gate.size(1);
  at::Tensor y = at::empty({rows, n}, gate.options());

  ForwardParams p{};
  p.gate = gate.const_data_ptr();
  p.up = up.const_data_ptr();
  p.y = y.mutable_data_ptr();
  p.rows = rows;
  p.n = n;
  p.stride_gate = gate.stride(0);
  p.stride_up = up.stride(0);
  p.stride_y = n;
  p.activation = static_cast<int>(activation);
  p.dtype = cuda::dtype_of(gate);
  launch_forward(p, cuda::current_stream());
  cuda::check_launch();
  return y;
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& dy, const at::Tensor& gate, const at::Tensor& up,
                                                 int64_t activation, bool fused) {
  check_inputs(gate, up, activation, cuda::kDeviceType);
  check_gradient(dy, gate);
  const cuda::DeviceGuard guard(gate.device());
  const int64_t rows = gate.size(0), n = gate.size(1);
  // fused: one [rows, 2n] gradient whose halves are d_gate and d_up (row stride 2n); else two [rows, n].
  at::Tensor dg = at::empty({rows, fused ? 2 * n : n}, gate.options());
  at::Tensor du = fused ? at::empty({0}, gate.options()) : at::empty({rows, n}, gate.options());

  BackwardParams p{};
  p.dy = dy.const_data_ptr();
  p.gate = gate.const_data_ptr();
  p.up = up.const_data_ptr();
  p.dgate = dg.mutable_data_ptr();
  p.dup = fused ? static_cast<void*>(static_cast<char*>(p.dgate) + n * gate.element_size()) : du.mutable_data_ptr();
  p.rows = rows;
  p.n = n;
  p.stride_dy = dy.stride(0);
  p.stride_gate = gate.stride(0);
  p.stride_up = up.stride(0);
  p.stride_dgate = p.stride_dup = fused ? 2 * n : n;
  p.activation = static_cast<int>(activation);
  p.dtype = cuda::dtype_of(gate);
  launch_backward(p, cuda::current_stream());
  cuda::check_launch();
  return {dg, du};
}

}  // namespace eurokernels::swiglu
