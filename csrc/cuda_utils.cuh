// Helpers shared by the CUDA kernels: dtype tags, fp32 conversion, vector loads, block reductions (device), and the
// launchers' runtime-to-template switches and launch (host). Free of torch headers on purpose: nvcc spends minutes
// on them, and the .cu files only need raw pointers.
//
// The same sources build twice: by nvcc for the GPU (eurokernels._cuda) and by the host compiler with
// EUROKERNELS_CUDA_SIM defined (eurokernels._cuda_sim, csrc/sim/README.md), where <cuda_runtime.h> is the SIMT
// simulation's. What differs between the two is confined to the #if defined(EUROKERNELS_CUDA_SIM) blocks here.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

// ------------------------------------------------------------------------------------------- the two builds
#if defined(EUROKERNELS_CUDA_SIM)
// A point where the simulation's seeded schedule may switch threads, to expose ordering races; nothing on a GPU.
#define EK_MEMORY_POINT() ::eurokernels::sim::memory_point()
#define EK_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::eurokernels::sim::dynamic_shared())
#else
#define EK_MEMORY_POINT() ((void)0)
// The block's dynamic shared memory (the launch's smem bytes) as T*. One untyped declaration for every kernel:
// extern __shared__ arrays of different types under one name do not compile in templates.
#define EK_DYNAMIC_SHARED(T, name)                               \
  extern __shared__ __align__(16) unsigned char ek_dynamic_smem[]; \
  T* name = reinterpret_cast<T*>(ek_dynamic_smem)
#endif

namespace eurokernels::cuda {

// Kernel<<<grid, block, smem, stream>>>(args...), spelled as a function so that it also compiles as host C++.
template <auto Kernel, typename... Args>
inline void launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args... args) {
#if defined(EUROKERNELS_CUDA_SIM)
  (void)stream;  // the simulation runs the kernel to completion before returning
  sim::launch<Kernel>(grid, block, smem, args...);
#else
  Kernel<<<grid, block, smem, stream>>>(args...);
#endif
}

// Matches the order in the launchers' dtype switch (see dtype_of() in the *_cuda.cpp bindings).
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Round an fp32 value to T and back: the rounding a model computing in T would apply.
template <typename T> __device__ __forceinline__ float round_to(float v) { return to_float(from_float<T>(v)); }

// VEC elements of T moved as one aligned access (128-bit when VEC * sizeof(T) == 16).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_f32(const T* p, float (&out)[VEC]) {
  EK_MEMORY_POINT();
  Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(p);
#pragma unroll
  for (int k = 0; k < VEC; ++k) out[k] = to_float(pk.v[k]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_f32(T* p, const float (&in)[VEC]) {
  EK_MEMORY_POINT();
  Pack<T, VEC> pk;
#pragma unroll
  for (int k = 0; k < VEC; ++k) pk.v[k] = from_float<T>(in[k]);
  *reinterpret_cast<Pack<T, VEC>*>(p) = pk;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum over the block, result broadcast to every thread. `scratch` holds 32 floats of shared memory; the trailing
// barrier makes it safe to call again right away.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.f;
  v = warp_sum(v);
  __syncthreads();
  return v;
}

// ---------------------------------------------------------------------------------------------- host (launchers)

// Calls f(T{}) with the storage type of a DType tag (runtime switch -> template argument).
template <typename F>
void dispatch_dtype(int dtype, F&& f) {
  switch (dtype) {
    case kFloat16: return f(__half{});
    case kBFloat16: return f(__nv_bfloat16{});
    default: return f(float{});
  }
}

// The widest vector of T (at most 16 bytes: one 128-bit access) such that every extent (row lengths and strides,
// in elements) is a multiple of it and every non-null pointer is aligned to it. Kernels then step VEC elements at a
// time from offsets that are multiples of VEC, so every access stays aligned.
template <typename T>
int pick_vec(std::initializer_list<int64_t> extents, std::initializer_list<const void*> ptrs) {
  auto ok = [&](int v) {
    for (int64_t e : extents) if (e % v) return false;
    for (const void* q : ptrs) if (q && reinterpret_cast<uintptr_t>(q) % (v * sizeof(T))) return false;
    return true;
  };
  int vec = 16 / int(sizeof(T));
  while (vec > 1 && !ok(vec)) vec /= 2;
  return vec;
}

// Calls f(std::integral_constant<int, VEC>{}) for the VEC pick_vec<T> returned. Only widths of at most 16 bytes of
// T are instantiated (pick_vec never returns wider ones): no dead fp32 x 8 kernels in the binary.
template <typename T, typename F>
void dispatch_vec(int vec, F&& f) {
  auto call = [&](auto v) {
    if constexpr (decltype(v)::value * sizeof(T) <= 16) f(v);
  };
  switch (vec) {
    case 8: return call(std::integral_constant<int, 8>{});
    case 4: return call(std::integral_constant<int, 4>{});
    case 2: return call(std::integral_constant<int, 2>{});
    default: return call(std::integral_constant<int, 1>{});
  }
}

// The largest gridDim.x: 2^31 - 1 on every GPU since sm_30; in the simulation, what it is set to (tests lower it to
// drive the grid-stride loops with a few rows).
inline int64_t grid_limit_x() {
#if defined(EUROKERNELS_CUDA_SIM)
  return sim::max_grid_x();
#else
  return 2147483647;
#endif
}

// gridDim.x for kernels that give one block to a row and step over rows by gridDim.x: one block per row up to the
// grid limit. (A plain unsigned(rows) wraps past 2^32 rows and would silently skip most of them.)
inline unsigned grid_rows(int64_t rows) { return unsigned(std::min<int64_t>(rows, grid_limit_x())); }

// Threads for a kernel that gives one block to a row of n elements, VEC at a time: one vector per thread, a
// multiple of 32, between 32 and max_threads (rows longer than that loop).
inline int row_threads(int64_t n, int vec, int max_threads) {
  const int64_t t = (n / vec + 31) / 32 * 32;
  return int(std::min<int64_t>(max_threads, std::max<int64_t>(32, t)));
}

}  // namespace eurokernels::cuda
