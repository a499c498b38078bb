// Softmax / log-softmax CUDA kernels for rows of any length: one block per row, each thread VEC elements at a time
// (128-bit accesses where the row length, strides and pointers allow), fp32 math, int64 offsets.
// Forward: an online log-sum-exp sweep (online_softmax.cuh, shared with cross-entropy), merged across the block,
// then a second sweep over the same row (from L1/L2) writing y = exp(x - lse) or x - lse.
// Backward: p = exp(x - lse) recomputed in fp32 from the input and the saved lse (see eurokernels/ops/softmax.py
// for why not from the rounded output); one sweep for c = sum(dy * p) (softmax) or sum(dy) (log_softmax), a block
// sum, then a second sweep writing dx = p * (dy - c) or dy - p * c.
// Blocks step over rows by gridDim.x, so more than 2^31 - 1 rows also work.
#include <algorithm>

#include "cuda_utils.cuh"
#include "online_softmax.cuh"
#include "softmax/softmax_launch.h"

namespace eurokernels::softmax {
namespace {

using namespace eurokernels::cuda;

template <typename T, int VEC, bool LOG>
__global__ void softmax_fwd_kernel(ForwardParams p) {
  __shared__ float scratch[64];
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const T* x = static_cast<const T*>(p.x) + row * p.stride_x;
    T* y = static_cast<T*>(p.y) + row * p.n;
    float m = -INFINITY, s = 0.f;
    for (int64_t i = int64_t(threadIdx.x) * VEC; i < p.n; i += int64_t(blockDim.x) * VEC) {
      float v[VEC];
      load_f32<T, VEC>(x + i, v);
      online_add(m, s, v);
    }
    block_online_merge(m, s, scratch);  // ends with a barrier: scratch is free for the next row
    const float lse = online_lse(m, s);
    if (threadIdx.x == 0) p.lse[row] = lse;
    for (int64_t i = int64_t(threadIdx.x) * VEC; i < p.n; i += int64_t(blockDim.x) * VEC) {
      float v[VEC];
      load_f32<T, VEC>(x + i, v);
#pragma unroll
      for (int k = 0; k < VEC; ++k) v[k] = LOG ? v[k] - lse : exp_diff(v[k] - lse);
      store_f32<T, VEC>(y + i, v);
    }
  }
}

template <typename T, int VEC, bool LOG>
__global__ void softmax_bwd_kernel(BackwardParams p) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const T* dy = static_cast<const T*>(p.dy) + row * p.stride_dy;
    const T* x = static_cast<const T*>(p.x) + row * p.stride_x;
    T* dx = static_cast<T*>(p.dx) + row * p.n;
    const float lse = p.lse[row];
    float acc = 0.f;
    for (int64_t i = int64_t(threadIdx.x) * VEC; i < p.n; i += int64_t(blockDim.x) * VEC) {
      float d[VEC];
      load_f32<T, VEC>(dy + i, d);
      if constexpr (LOG) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc += d[k];
      } else {
        float v[VEC];
        load_f32<T, VEC>(x + i, v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc += d[k] * exp_diff(v[k] - lse);
      }
    }
    const float c = block_sum(acc, scratch);  // ends with a barrier: scratch is free for the next row
    for (int64_t i = int64_t(threadIdx.x) * VEC; i < p.n; i += int64_t(blockDim.x) * VEC) {
      float d[VEC], v[VEC];
      load_f32<T, VEC>(dy + i, d);
      load_f32<T, VEC>(x + i, v);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float pk = exp_diff(v[k] - lse);
        d[k] = LOG ? d[k] - pk * c : pk * (d[k] - c);
      }
      store_f32<T, VEC>(dx + i, d);
    }
  }
}

// Calls f(T{}, integral_constant VEC, bool_constant LOG) for the dtype, the widest vector the extents and pointers
// allow, and the log flag (runtime values -> template arguments).
template <typename F>
void dispatch(int dtype, bool log, std::initializer_list<int64_t> extents, std::initializer_list<const void*> ptrs,
              F&& f) {
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    dispatch_vec<T>(pick_vec<T>(extents, ptrs), [&](auto v) {
      if (log) {
        f(t, v, std::true_type{});
      } else {
        f(t, v, std::false_type{});
      }
    });
  });
}

// At most 512 threads per block: several blocks per SM on long rows.
int threads_for(int64_t n, int vec) { return row_threads(n, vec, 512); }

}  // namespace

void launch_forward(const ForwardParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.n == 0) return;
  dispatch(p.dtype, p.log, {p.n, p.stride_x}, {p.x, p.y}, [&](auto t, auto v, auto log) {
    constexpr int VEC = decltype(v)::value;
    constexpr bool LOG = decltype(log)::value;
    cuda::launch<softmax_fwd_kernel<decltype(t), VEC, LOG>>(grid_rows(p.rows), threads_for(p.n, VEC), 0, stream, p);
  });
}

void launch_backward(const BackwardParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.n == 0) return;
  dispatch(p.dtype, p.log, {p.n, p.stride_dy, p.stride_x}, {p.dy, p.x, p.dx}, [&](auto t, auto v, auto log) {
    constexpr int VEC = decltype(v)::value;
    constexpr bool LOG = decltype(log)::value;
    cuda::launch<softmax_bwd_kernel<decltype(t), VEC, LOG>>(grid_rows(p.rows), threads_for(p.n, VEC), 0, stream, p);
  });
}

}  // namespace eurokernels::softmax
