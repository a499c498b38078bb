// Host-side helpers for the CUDA bindings (*_cuda.cpp): the kernels' DType tag of a tensor, and the four things that
// differ between the GPU build (eurokernels._cuda) and the simulation build (eurokernels._cuda_sim, CPU tensors):
// the device type tensors must be on, the device guard, the stream, and the check after a launch.
#pragma once
#include <ATen/ATen.h>

#include <initializer_list>
#include <optional>
#include <utility>

#if defined(EUROKERNELS_CUDA_SIM)
#include "sim/cuda_sim_host.h"
#else
// (c10/cuda headers only, not ATen/cuda/CUDAContext.h, which needs cuSPARSE/cuBLAS headers the minimal toolkit
// lacks and costs build time.)
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace eurokernels::cuda {

inline int dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return 0;     // kFloat32 in cuda_utils.cuh
    case at::kHalf: return 1;      // kFloat16
    case at::kBFloat16: return 2;  // kBFloat16
    default: TORCH_CHECK(false, "unsupported dtype ", t.scalar_type(), " (expected float32, float16 or bfloat16)");
  }
}

#if defined(EUROKERNELS_CUDA_SIM)
constexpr at::DeviceType kDeviceType = at::kCPU;  // the simulation runs the kernels on CPU tensors

struct DeviceGuard {
  explicit DeviceGuard(at::Device) {}
};

inline cudaStream_t current_stream() { return nullptr; }

// What C10_CUDA_KERNEL_LAUNCH_CHECK reports on a GPU: a refused launch, or here also a failure inside the kernel
// (a divergent barrier, an incomplete warp collective), naming the kernel, block and thread.
inline void check_launch() {
  const std::string err = sim::take_launch_error();
  TORCH_CHECK(err.empty(), err);
}

inline int sm_count(int /*device*/) { return sim::sm_count(); }
#else
constexpr at::DeviceType kDeviceType = at::kCUDA;

using DeviceGuard = c10::cuda::CUDAGuard;

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

inline void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }

inline int sm_count(int device) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}
#endif

// An optional tensor for check_same_device: its address, or nullptr when absent.
inline const at::Tensor* maybe(const std::optional<at::Tensor>& t) { return t ? &*t : nullptr; }

// Every tensor the kernel reads or writes on the device of `first` (the kernels take raw pointers: a tensor on
// another GPU, or on the CPU, would be read through a pointer that is not valid there).
inline void check_same_device(const at::Tensor& first, const char* first_name,
                              std::initializer_list<std::pair<const at::Tensor*, const char*>> others) {
  TORCH_CHECK(first.device().type() == kDeviceType, first_name, " must be on ", kDeviceType, ", got ",
              first.device());
  for (const auto& [t, name] : others) {
    if (t && t->defined()) {
      TORCH_CHECK(t->device() == first.device(), name, " must be on ", first_name, "'s device ", first.device(),
                  ", got ", t->device());
    }
  }
}

}  // namespace eurokernels::cuda
