// SwiGLU / GeGLU entry points. gate and up are 2-D [rows, n] views with a unit stride along n (any row stride;
// for a fused projection, the two halves of the same rows); outputs are fresh contiguous tensors. The Python op
// (eurokernels/ops/swiglu.py) reshapes and validates.
#pragma once
#include <ATen/ATen.h>
#include <tuple>

#include "common.h"
#include "swiglu/swiglu_common.h"

namespace eurokernels::swiglu {

// -> y = act(gate) * up, [rows, n]
at::Tensor forward_cpu(const at::Tensor& gate, const at::Tensor& up, int64_t activation);
// -> (d_gate, d_up), each [rows, n]; with `fused`: (d_fused [rows, 2n] = [d_gate | d_up], empty)
std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& dy, const at::Tensor& gate, const at::Tensor& up,
                                                int64_t activation, bool fused);

at::Tensor forward_cuda(const at::Tensor& gate, const at::Tensor& up, int64_t activation);
std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& dy, const at::Tensor& gate, const at::Tensor& up,
                                                 int64_t activation, bool fused);

// The internal contract of every entry point (the Python op has validated the user's arguments). The kernels step
// along n with unit stride; an empty tensor may have any strides (nothing is read).
inline void check_layout(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.numel() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1, name, " must be contiguous along n");
}

inline void check_inputs(const at::Tensor& gate, const at::Tensor& up, int64_t activation, at::DeviceType device) {
  CHECK_DEVICE(gate, device);
  CHECK_DIM(gate, 2);
  CHECK_SAME_SHAPE(up, gate);
  CHECK_DTYPE(up, gate.scalar_type());
  TORCH_CHECK(up.device() == gate.device(), "up must be on ", gate.device(), ", got ", up.device());
  check_layout(gate, "gate");
  check_layout(up, "up");
  TORCH_CHECK(activation >= kSilu && activation <= kGelu, "unknown activation ", activation);
}

inline void check_gradient(const at::Tensor& dy, const at::Tensor& gate) {
  CHECK_SAME_SHAPE(dy, gate);
  CHECK_DTYPE(dy, gate.scalar_type());
  TORCH_CHECK(dy.device() == gate.device(), "dy must be on ", gate.device(), ", got ", dy.device());
  check_layout(dy, "dy");
}

}  // namespace eurokernels::swiglu
