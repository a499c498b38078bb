// Plain-C++ interface between the torch binding (swiglu_cuda.cpp) and the CUDA kernels (swiglu.cu).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace eurokernels::swiglu {

// Every tensor is [rows, n] with a unit stride along n and the given row stride (for a fused projection, gate and
// up are the two halves of the same rows, and d_gate / d_up the two halves of one [rows, 2n] gradient).
struct ForwardParams {
  const void* gate;
  const void* up;
  void* y;
  int64_t rows, n, stride_gate, stride_up, stride_y;
  int activation;  // enum Activation (swiglu_common.h)
  int dtype;       // eurokernels::cuda::DType, of every tensor
};

struct BackwardParams {
  const void* dy;
  const void* gate;
  const void* up;
  void* dgate;
  void* dup;
  int64_t rows, n, stride_dy, stride_gate, stride_up, stride_dgate, stride_dup;
  int activation;
  int dtype;
};

void launch_forward(const ForwardParams& p, cudaStream_t stream);
void launch_backward(const BackwardParams& p, cudaStream_t stream);

}  // namespace eurokernels::swiglu
