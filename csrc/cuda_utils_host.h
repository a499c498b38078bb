// Host-side helpers for the CUDA bindings (*_cuda.cpp): map a tensor's dtype to the kernels' DType tag.
#pragma once
// (c10/cuda headers only, not ATen/cuda/CUDAContext.h, which needs cuSPARSE/cuBLAS headers the minimal toolkit
// lacks and costs build time.)
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime_api.h>

namespace eurokernels::cuda {

inline int dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return 0;     // kFloat32 in cuda_utils.cuh
    case at::kHalf: return 1;      // kFloat16
    case at::kBFloat16: return 2;  // kBFloat16
    default: TORCH_CHECK(false, "unsupported dtype ", t.scalar_type(), " (expected float32, float16 or bfloat16)");
  }
}

inline int sm_count(int device) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

}  // namespace eurokernels::cuda
