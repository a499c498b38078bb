// Plain-C++ interface between the torch binding (softmax_cuda.cpp) and the CUDA kernels (softmax.cu).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace eurokernels::softmax {

struct ForwardParams {
  const void* x;  // [rows, n], row stride stride_x, unit stride along n
  void* y;        // [rows, n] contiguous
  float* lse;     // [rows]: log-sum-exp of each row
  int64_t rows, n, stride_x;
  bool log;       // log_softmax (else softmax)
  int dtype;      // eurokernels::cuda::DType of x and y
};

struct BackwardParams {
  const void* dy;    // [rows, n], row stride stride_dy, unit stride along n
  const void* x;     // the forward's input [rows, n], row stride stride_x, unit stride along n
  const float* lse;  // [rows] from the forward
  void* dx;          // [rows, n] contiguous
  int64_t rows, n, stride_dy, stride_x;
  bool log;
  int dtype;         // of dy, x and dx
};

void launch_forward(const ForwardParams& p, cudaStream_t stream);
void launch_backward(const BackwardParams& p, cudaStream_t stream);

}  // namespace eurokernels::softmax
