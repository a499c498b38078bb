// SwiGLU / GeGLU CUDA kernels: elementwise over [rows, n]. blockIdx.x covers a row's columns (VEC elements per
// thread per step, 128-bit accesses when the rows allow), blockIdx.y strides over the rows; gate and up are read
// once and each output written once. The activation is a template constant (one kernel, three instantiations).
#include "cuda_utils.cuh"
#include "swiglu/swiglu_common.h"
#include "swiglu/swiglu_launch.h"

namespace eurokernels::swiglu {
namespace {

using namespace eurokernels::cuda;

constexpr int kThreads = 256;
constexpr int64_t kMaxRowBlocks = 65535;  // gridDim.y limit; more rows are covered by the grid-stride loop

template <typename T, int VEC, int ACT>
__global__ void swiglu_fwd_kernel(ForwardParams p) {
  const int64_t col_step = int64_t(gridDim.x) * blockDim.x * VEC;
  for (int64_t row = blockIdx.y; row < p.rows; row += gridDim.y) {  // int64 offsets: rows * n can pass 2^31
    const T* g = static_cast<const T*>(p.gate) + row * p.stride_gate;
    const T* u = static_cast<const T*>(p.up) + row * p.stride_up;
    T* y = static_cast<T*>(p.y) + row * p.stride_y;
    for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; i < p.n; i += col_step) {
      float gv[VEC], uv[VEC];
      load_f32<T, VEC>(g + i, gv);
      load_f32<T, VEC>(u + i, uv);
#pragma unroll
      for (int k = 0; k < VEC; ++k) gv[k] = activation<ACT, false>(gv[k], nullptr) * uv[k];
      store_f32<T, VEC>(y + i, gv);
    }
  }
}

// d_gate = dy * up * act'(gate), d_up = dy * act(gate): the activation recomputed from gate, nothing saved.
template <typename T, int VEC, int ACT>
__global__ void swiglu_bwd_kernel(BackwardParams p) {
  const int64_t col_step = int64_t(gridDim.x) * blockDim.x * VEC;
  for (int64_t row = blockIdx.y; row < p.rows; row += gridDim.y) {
    const T* dy = static_cast<const T*>(p.dy) + row * p.stride_dy;
    const T* g = static_cast<const T*>(p.gate) + row * p.stride_gate;
    const T* u = static_cast<const T*>(p.up) + row * p.stride_up;
    T* dg = static_cast<T*>(p.dgate) + row * p.stride_dgate;
    T* du = static_cast<T*>(p.dup) + row * p.stride_dup;
    for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; i < p.n; i += col_step) {
      float dv[VEC], gv[VEC], uv[VEC];
      load_f32<T, VEC>(dy + i, dv);
      load_f32<T, VEC>(g + i, gv);
      load_f32<T, VEC>(u + i, uv);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        float da;
        const float a = activation<ACT, true>(gv[k], &da);
        gv[k] = dv[k] * uv[k] * da;  // d_gate, in place of the gate value it came from
        uv[k] = dv[k] * a;           // d_up
      }
      store_f32<T, VEC>(dg + i, gv);
      store_f32<T, VEC>(du + i, uv);
    }
  }
}

// One block row of threads spans a row once (fewer threads for short rows); rows beyond 65535 loop.
dim3 grid_for(int64_t rows, int64_t n, int vec, int threads) {
  const int64_t per_block = int64_t(threads) * vec;
  return dim3(unsigned((n + per_block - 1) / per_block), unsigned(std::min(rows, kMaxRowBlocks)));
}

}  // namespace

void launch_forward(const ForwardParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.n == 0) return;
  dispatch_dtype(p.dtype, [&](auto t) {
    using T = decltype(t);
    const int vec = pick_vec<T>({p.n, p.stride_gate, p.stride_up, p.stride_y}, {p.gate, p.up, p.y});
    const int threads = row_threads(p.n, vec, kThreads);
    dispatch_vec<T>(vec, [&](auto v) {
      dispatch_activation(p.activation, [&](auto act) {
        cuda::launch<swiglu_fwd_kernel<T, decltype(v)::value, decltype(act)::value>>(
            grid_for(p.rows, p.n, vec, threads), threads, 0, stream, p);
      });
    });
  });
}

void launch_backward(const BackwardParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.n == 0) return;
  dispatch_dtype(p.dtype, [&](auto t) {
    using T = decltype(t);
    const int vec = pick_vec<T>({p.n, p.stride_dy, p.stride_gate, p.stride_up, p.stride_dgate, p.stride_dup},
                                {p.dy, p.gate, p.up, p.dgate, p.dup});
    const int threads = row_threads(p.n, vec, kThreads);
    dispatch_vec<T>(vec, [&](auto v) {
      dispatch_activation(p.activation, [&](auto act) {
        cuda::launch<swiglu_bwd_kernel<T, decltype(v)::value, decltype(act)::value>>(
            grid_for(p.rows, p.n, vec, threads), threads, 0, stream, p);
      });
    });
  });
}

}  // namespace eurokernels::swiglu
