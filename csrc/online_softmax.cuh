// Online softmax on CUDA: the running (max, sum of exps) of a row that one block sweeps VEC elements per thread at
// a time, and its merge across the block. Shared by the cross-entropy and softmax kernels (the CPU kernels share
// online_softmax_cpu.h instead).
//
// State (m, s): m = the largest value seen, s = sum of exp(v - m) over the values seen; lse = m + log(s). Both in
// natural units: exponents are formed as exp2((v - m) * log2(e)), i.e. the difference is taken before the scaling,
// so it is exact for close values instead of carrying the rounding of v * log2(e) (half an ulp of |v| * 1.44: 6e-5
// at |v| = 1000, a relative error of that size in every probability).
#pragma once
#include <cuda_runtime.h>

#include "cuda_utils.cuh"

namespace eurokernels::cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// exp(d) through the hardware exp2.
__device__ __forceinline__ float exp_diff(float d) { return exp2f(d * kLog2e); }

// max(a, b) that returns NaN when either is NaN (fmaxf returns the other operand): a NaN must reach the state, or
// a thread whose values are only NaN and -inf would leave it empty and the row would come out finite (torch: NaN).
__device__ __forceinline__ float max_nan(float a, float b) { return (a > b || a != a) ? a : b; }

// Adds VEC values to the state: one rescale of s per VEC values, so about one exp per element (against two for the
// per-element update). All -inf so far leaves the state empty (m = -inf, s = 0) rather than making it NaN; any NaN
// makes it NaN.
template <int VEC>
__device__ __forceinline__ void online_add(float& m, float& s, const float (&v)[VEC]) {
  float vm = v[0];
#pragma unroll
  for (int k = 1; k < VEC; ++k) vm = max_nan(vm, v[k]);
  const float mn = max_nan(m, vm);
  if (mn == -INFINITY) return;
  float e = 0.f;
#pragma unroll
  for (int k = 0; k < VEC; ++k) e += exp_diff(v[k] - mn);
  s = s * exp_diff(m - mn) + e;
  m = mn;
}

// Merges the state (m, s) with (m2, s2).
__device__ __forceinline__ void online_merge(float& m, float& s, float m2, float s2) {
  const float mn = max_nan(m, m2);
  if (mn == -INFINITY) return;  // both empty (or all -inf so far)
  s = s * exp_diff(m - mn) + s2 * exp_diff(m2 - mn);
  m = mn;
}

// The log-sum-exp of a merged state: -inf for an empty (all -inf) row, as torch.logsumexp.
__device__ __forceinline__ float online_lse(float m, float s) { return m + log2f(s) * kLn2; }

namespace detail {

// Merges (m, s) across the block, and when WITH_SUM also sums sz in the same shuffle rounds.
template <bool WITH_SUM>
__device__ __forceinline__ void block_online_merge(float& m, float& s, float& sz, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  auto warp_merge = [&] {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      online_merge(m, s, __shfl_xor_sync(0xffffffffu, m, off), __shfl_xor_sync(0xffffffffu, s, off));
      if constexpr (WITH_SUM) sz += __shfl_xor_sync(0xffffffffu, sz, off);
    }
  };
  warp_merge();
  if (lane == 0) {
    scratch[warp] = m;
    scratch[32 + warp] = s;
    if constexpr (WITH_SUM) scratch[64 + warp] = sz;
  }
  __syncthreads();
  m = lane < warps ? scratch[lane] : -INFINITY;
  s = lane < warps ? scratch[32 + lane] : 0.f;
  if constexpr (WITH_SUM) sz = lane < warps ? scratch[64 + lane] : 0.f;
  warp_merge();
  __syncthreads();  // scratch may be reused right away
}

}  // namespace detail

// The block's state, broadcast to every thread. scratch: 64 floats of shared memory.
__device__ __forceinline__ void block_online_merge(float& m, float& s, float* scratch) {
  float unused = 0.f;
  detail::block_online_merge<false>(m, s, unused, scratch);
}

// The same, plus the block's sum of sz (one pass for both). scratch: 96 floats of shared memory.
__device__ __forceinline__ void block_online_merge(float& m, float& s, float& sz, float* scratch) {
  detail::block_online_merge<true>(m, s, sz, scratch);
}

}  // namespace eurokernels::cuda
