// Cross-entropy CUDA kernel: one block per row, 128-bit loads where the row allows. Forward: an online softmax in
// base 2 where each thread takes VEC elements at a time (one rescale of its running sum per VEC elements, so about
// one exp2 per element), then (max, sum) pairs are merged across the block. With a gradient requested, a second
// sweep over the same row (an L2 hit for the row just read) writes it; in backward mode (lse given) only that sweep
// runs. The row math is cross_entropy_common.h, shared with the CPU kernel. In place (grad == x) is safe: each
// thread reads its elements before writing the same ones.
#include <initializer_list>
#include <type_traits>

#include "cross_entropy/cross_entropy_common.h"
#include "cross_entropy/cross_entropy_launch.h"
#include "cuda_utils.cuh"

namespace eurokernels::cross_entropy {
namespace {

using namespace eurokernels::cuda;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float capped(float v, float softcap) {
  return softcap == 0.f ? v : softcap * tanhf(v / softcap);
}

// Merge the online-softmax state (m, s) with (m2, s2), both in base 2: s counts 2^(z2 - m).
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  if (mn == -INFINITY) return;  // both empty (or all -inf so far)
  s = s * exp2f(m - mn) + s2 * exp2f(m2 - mn);
  m = mn;
}

// (m, s, sum_z) over the block, broadcast to every thread. scratch: 3 * 32 floats of shared memory.
__device__ void block_merge(float& m, float& s, float& sz, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    merge(m, s, __shfl_xor_sync(0xffffffffu, m, off), __shfl_xor_sync(0xffffffffu, s, off));
    sz += __shfl_xor_sync(0xffffffffu, sz, off);
  }
  if (lane == 0) {
    scratch[warp] = m;
    scratch[32 + warp] = s;
    scratch[64 + warp] = sz;
  }
  __syncthreads();
  m = lane < warps ? scratch[lane] : -INFINITY;
  s = lane < warps ? scratch[32 + lane] : 0.f;
  sz = lane < warps ? scratch[64 + lane] : 0.f;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    merge(m, s, __shfl_xor_sync(0xffffffffu, m, off), __shfl_xor_sync(0xffffffffu, s, off));
    sz += __shfl_xor_sync(0xffffffffu, sz, off);
  }
  __syncthreads();
}

template <typename T, int VEC>
__global__ void cross_entropy_kernel(Params p) {
  __shared__ float scratch[96];
  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + row * p.stride_x;
  const Options& o = p.opts;
  const Target t = classify(p.labels[row], p.n, o);
  const bool smoothing = o.label_smoothing != 0.f;

  float lse;
  if (p.lse_in) {
    lse = p.lse_in[row];
  } else {
    float m = -INFINITY, s = 0.f, sz = 0.f;
    for (int64_t i = int64_t(threadIdx.x) * VEC; i < p.n; i += int64_t(blockDim.x) * VEC) {
      float v[VEC];
      load_f32<T, VEC>(x + i, v);
      float vm = -INFINITY;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        v[k] = capped(v[k], o.softcap);
        if (smoothing) sz += v[k];
        v[k] *= kLog2e;
        vm = fmaxf(vm, v[k]);
      }
      const float mn = fmaxf(m, vm);
      if (mn == -INFINITY) continue;
      float e = 0.f;
#pragma unroll
      for (int k = 0; k < VEC; ++k) e += exp2f(v[k] - mn);
      s = s * exp2f(m - mn) + e;
      m = mn;
    }
    block_merge(m, s, sz, scratch);
    lse = (m + log2f(s)) * kLn2;
    if (threadIdx.x == 0) {
      const float zt = t.in_shard ? capped(to_float(x[t.local]), o.softcap) : 0.f;
      p.loss[row] = row_loss(lse, zt, sz, t, o);
      p.lse[row] = lse;
    }
  }
  if (!p.grad) return;

  const GradCoef c = grad_coef(p.row_scale[row], p.dlse ? p.dlse[row] : 0.f, lse, t, o);
  const float lse2 = lse * kLog2e;
  T* g = static_cast<T*>(p.grad) + row * p.stride_g;
  const int64_t target = t.in_shard ? t.local : -1;
  for (int64_t i = int64_t(threadIdx.x) * VEC; i < p.n; i += int64_t(blockDim.x) * VEC) {
    float v[VEC];
    load_f32<T, VEC>(x + i, v);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float th = o.softcap == 0.f ? 0.f : tanhf(v[k] / o.softcap);
      const float z = o.softcap == 0.f ? v[k] : o.softcap * th;
      float d = c.p * exp2f(z * kLog2e - lse2) - c.u - (i + k == target ? c.t : 0.f);
      v[k] = o.softcap == 0.f ? d : d * (1.f - th * th);
    }
    store_f32<T, VEC>(g + i, v);
  }
}

// The widest vector (up to 16 bytes) that divides the row length, the row strides and the pointers.
template <typename T>
int pick_vec(int64_t n, std::initializer_list<int64_t> strides, std::initializer_list<const void*> ptrs) {
  int vec = 16 / int(sizeof(T));
  auto ok = [&](int v) {
    if (n % v) return false;
    for (int64_t s : strides) if (s % v) return false;
    for (const void* q : ptrs) if (q && reinterpret_cast<uintptr_t>(q) % (v * sizeof(T))) return false;
    return true;
  };
  while (vec > 1 && !ok(vec)) vec /= 2;
  return vec;
}

template <typename F>
void dispatch_vec(int vec, F&& f) {
  switch (vec) {
    case 8: return f(std::integral_constant<int, 8>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 2: return f(std::integral_constant<int, 2>{});
    default: return f(std::integral_constant<int, 1>{});
  }
}

}  // namespace

void launch(const Params& p, cudaStream_t stream) {
  if (p.rows == 0 || p.n == 0) return;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const int vec = pick_vec<T>(p.n, {p.stride_x, p.grad ? p.stride_g : 0}, {p.x, p.grad});
    // Threads: enough for one vector each, a multiple of 32, at most 512 (several blocks per SM on long rows).
    int64_t threads = (p.n / vec + 31) / 32 * 32;
    threads = threads < 32 ? 32 : (threads > 512 ? 512 : threads);
    dispatch_vec(vec, [&](auto v) {
      cross_entropy_kernel<T, decltype(v)::value><<<unsigned(p.rows), unsigned(threads), 0, stream>>>(p);
    });
  };
  switch (p.dtype) {
    case kFloat16: return run(__half{});
    case kBFloat16: return run(__nv_bfloat16{});
    default: return run(float{});
  }
}

}  // namespace eurokernels::cross_entropy
