// RMSNorm CUDA kernels. Forward: one block per row (grid-stride), 128-bit vector accesses when the row allows, fp32
// sum of squares, then a second sweep over the same row (an L1/L2 hit) to scale. Backward: a fixed number of blocks,
// each owning a contiguous chunk of rows and one fp32 row of dw partials; a second kernel sums the partials in
// block order, so dw is bitwise deterministic (no atomics).
#include "cuda_utils.cuh"
#include "rms_norm/rms_norm_common.h"
#include "rms_norm/rms_norm_launch.h"

namespace eurokernels::rms_norm {
namespace {

using namespace eurokernels::cuda;

// 1024 threads at most (row_threads): __launch_bounds__ keeps the compiler within the 64 registers per thread that
// a 1024-thread block can have, or the launch would fail on the GPU. The explicit 1 block per SM matters: with it
// left out, ptxas (CUDA 13) capped two backward instantiations at 32 registers and spilled.
template <typename T, typename W, int VEC>
__global__ void __launch_bounds__(1024, 1) rms_norm_fwd_kernel(ForwardParams p) {
  __shared__ float scratch[32];
  const W* w = static_cast<const W*>(p.weight);
  // One block per row; blocks step by gridDim.x, so more rows than the grid holds also work (grid_rows).
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const T* x = static_cast<const T*>(p.x) + row * p.stride_x;
    const T* r = p.residual ? static_cast<const T*>(p.residual) + row * p.stride_r : nullptr;
    T* res_out = p.residual ? static_cast<T*>(p.residual_out) + row * p.n : nullptr;
    T* y = static_cast<T*>(p.y) + row * p.n;
    const T* h = r ? res_out : x;

    float ss = 0.f;
    for (int64_t i = int64_t(threadIdx.x) * VEC; i < p.n; i += int64_t(blockDim.x) * VEC) {
      float v[VEC];
      load_f32<T, VEC>(x + i, v);
      if (r) {
        float rv[VEC];
        load_f32<T, VEC>(r + i, rv);
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[k] = round_to<T>(v[k] + rv[k]);
        store_f32<T, VEC>(res_out + i, v);  // read back below by this same thread
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) ss += v[k] * v[k];
    }
    ss = block_sum(ss, scratch);  // ends with a barrier: scratch is free for the next row
    const float rstd = rsqrtf(ss / float(p.n) + p.eps);
    if (threadIdx.x == 0) p.rstd[row] = rstd;

    for (int64_t i = int64_t(threadIdx.x) * VEC; i < p.n; i += int64_t(blockDim.x) * VEC) {
      float v[VEC], wv[VEC];
      load_f32<T, VEC>(h + i, v);
      if (w) load_f32<W, VEC>(w + i, wv);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        float we = 1.f;
        if (w) we = p.casting == kGemma ? p.offset + wv[k] : round_to<T>(p.offset + wv[k]);
        v[k] = scale_element(v[k], rstd, we, w != nullptr, p.casting, [](float a) { return round_to<T>(a); });
      }
      store_f32<T, VEC>(y + i, v);
    }
  }
}

template <typename T, typename W, int VEC>
__global__ void __launch_bounds__(1024, 1) rms_norm_bwd_kernel(BackwardParams p) {
  __shared__ float scratch[32];
  const int64_t per_block = (p.rows + gridDim.x - 1) / gridDim.x;
  const int64_t row0 = blockIdx.x * per_block, row1 = min(p.rows, row0 + per_block);
  const W* w = static_cast<const W*>(p.weight);
  float* dw_acc = p.dw_partial ? p.dw_partial + int64_t(blockIdx.x) * p.n : nullptr;
  const float inv_n = 1.f / float(p.n);

  for (int64_t row = row0; row < row1; ++row) {
    const T* dy = static_cast<const T*>(p.dy) + row * p.stride_dy;
    const T* h = static_cast<const T*>(p.h) + row * p.stride_h;
    const T* dres = p.dres ? static_cast<const T*>(p.dres) + row * p.stride_dres : nullptr;
    T* dx = static_cast<T*>(p.dx) + row * p.n;
    const float rstd = p.rstd[row];

    float acc = 0.f;  // sum(g * h), g = dy * (offset + w)
    for (int64_t i = int64_t(threadIdx.x) * VEC; i < p.n; i += int64_t(blockDim.x) * VEC) {
      float d[VEC], hv[VEC], wv[VEC];
      load_f32<T, VEC>(dy + i, d);
      load_f32<T, VEC>(h + i, hv);
      if (w) load_f32<W, VEC>(w + i, wv);
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc += d[k] * (w ? p.offset + wv[k] : 1.f) * hv[k];
    }
    const float c = block_sum(acc, scratch) * rstd * inv_n;  // mean(g * nhat)

    // Each thread touches the same columns on every row, so its dw_acc updates never race.
    for (int64_t i = int64_t(threadIdx.x) * VEC; i < p.n; i += int64_t(blockDim.x) * VEC) {
      float d[VEC], hv[VEC], wv[VEC], out[VEC];
      load_f32<T, VEC>(dy + i, d);
      load_f32<T, VEC>(h + i, hv);
      if (w) load_f32<W, VEC>(w + i, wv);
      if (dres) load_f32<T, VEC>(dres + i, out);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float nh = hv[k] * rstd, g = d[k] * (w ? p.offset + wv[k] : 1.f);
        out[k] = rstd * (g - nh * c) + (dres ? out[k] : 0.f);
        if (dw_acc) dw_acc[i + k] += d[k] * nh;
      }
      store_f32<T, VEC>(dx + i, out);
    }
  }
}

// dw[j] = sum over blocks b, in order, of partial[b, j].
__global__ void sum_partials_kernel(const float* partial, float* dw, int blocks, int64_t n) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  float s = 0.f;
  for (int b = 0; b < blocks; ++b) s += partial[int64_t(b) * n + j];
  dw[j] = s;
}

// Calls f(T{}, W{}) with the storage types of the two dtypes (runtime switch -> template arguments).
template <typename F>
void dispatch_types(int x_dtype, int w_dtype, F&& f) {
  dispatch_dtype(x_dtype, [&](auto t) { dispatch_dtype(w_dtype, [&](auto w) { f(t, w); }); });
}

}  // namespace

void launch_forward(const ForwardParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.n == 0) return;
  dispatch_types(p.x_dtype, p.w_dtype, [&](auto t, auto wt) {
    using T = decltype(t);
    using W = decltype(wt);
    // The weight is read with the same vector width: require its alignment too.
    int vec = pick_vec<T>({p.n, p.stride_x, p.stride_r}, {p.x, p.residual, p.y, p.residual_out});
    if (p.weight && (reinterpret_cast<uintptr_t>(p.weight) % (vec * sizeof(W)))) vec = 1;
    const int threads = row_threads(p.n, vec, 1024);
    dispatch_vec<T>(vec, [&](auto v) {
      cuda::launch<rms_norm_fwd_kernel<T, W, decltype(v)::value>>(grid_rows(p.rows), threads, 0, stream, p);
    });
  });
}

void launch_backward(const BackwardParams& p, cudaStream_t stream) {
  if (p.n == 0) return;
  if (p.rows > 0) {
    dispatch_types(p.x_dtype, p.w_dtype, [&](auto t, auto wt) {
      using T = decltype(t);
      using W = decltype(wt);
      int vec = pick_vec<T>({p.n, p.stride_dy, p.stride_h, p.stride_dres}, {p.dy, p.h, p.dres, p.dx});
      if (p.weight && (reinterpret_cast<uintptr_t>(p.weight) % (vec * sizeof(W)))) vec = 1;
      const int threads = row_threads(p.n, vec, 1024);
      dispatch_vec<T>(vec, [&](auto v) {
        cuda::launch<rms_norm_bwd_kernel<T, W, decltype(v)::value>>(unsigned(p.blocks), threads, 0, stream, p);
      });
    });
  }
  if (p.dw) {
    cuda::launch<sum_partials_kernel>(unsigned((p.n + 255) / 256), 256, 0, stream, p.dw_partial, p.dw, p.blocks, p.n);
  }
}

}  // namespace eurokernels::rms_norm
