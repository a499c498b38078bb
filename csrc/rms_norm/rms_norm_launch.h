// Plain-C++ interface between the torch binding (rms_norm_cuda.cpp) and the CUDA kernels (rms_norm.cu).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace eurokernels::rms_norm {

struct ForwardParams {
  const void* x;        // [rows, n], row stride stride_x
  const void* residual; // [rows, n], row stride stride_r, or nullptr
  const void* weight;   // [n] or nullptr
  void* y;              // [rows, n] contiguous
  void* residual_out;   // [rows, n] contiguous, or nullptr
  float* rstd;          // [rows]
  int64_t rows, n, stride_x, stride_r;
  float eps, offset;
  int casting;
  int x_dtype, w_dtype;  // eurokernels::cuda::DType
};

struct BackwardParams {
  const void* dy;        // [rows, n], row stride stride_dy
  const void* h;         // [rows, n], row stride stride_h: the normalized input
  const void* weight;    // [n] or nullptr
  const float* rstd;     // [rows]
  const void* dres;      // [rows, n], row stride stride_dres, or nullptr
  void* dx;              // [rows, n] contiguous
  float* dw_partial;     // [blocks, n] fp32 scratch (nullptr without weight)
  float* dw;             // [n] fp32 (nullptr without weight)
  int64_t rows, n, stride_dy, stride_h, stride_dres;
  float offset;
  int x_dtype, w_dtype;
  int blocks;            // programs in the row-chunked backward; fixes the dw summation order
};

void launch_forward(const ForwardParams& p, cudaStream_t stream);
void launch_backward(const BackwardParams& p, cudaStream_t stream);

}  // namespace eurokernels::rms_norm
