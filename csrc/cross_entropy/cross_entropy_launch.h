// Plain-C++ interface between the torch binding (cross_entropy_cuda.cpp) and the CUDA kernel (cross_entropy.cu).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cross_entropy/cross_entropy_common.h"

namespace eurokernels::cross_entropy {

struct Params {
  const void* x;          // logits [rows, n], row stride stride_x, unit stride along n
  const int64_t* labels;  // [rows]
  const float* lse_in;    // [rows]: backward mode (no statistics sweep), or nullptr
  const float* row_scale; // [rows]: upstream gradient of each row's loss (with grad)
  const float* dlse;      // [rows] or nullptr
  float* loss;            // [rows] (forward modes)
  float* lse;             // [rows] (forward modes)
  void* grad;             // [rows, n], row stride stride_g, or nullptr; may equal x (in place)
  int64_t rows, n, stride_x, stride_g;
  Options opts;
  int dtype;              // eurokernels::cuda::DType of x and grad
};

void launch(const Params& p, cudaStream_t stream);

}  // namespace eurokernels::cross_entropy
