// The CUDA built-ins for the simulation build of csrc/ (eurokernels._cuda_sim): the kernels' .cu sources compile
// as host C++ against this header (reached as <cuda_runtime.h> through csrc/sim/include/) and run on CPU fibers,
// one per CUDA thread, scheduled by csrc/sim/cuda_sim.cpp. See csrc/sim/README.md for the model and its limits.
//
// What each built-in means here:
//   threadIdx / blockIdx / blockDim / gridDim   the running fiber's and its block's indices (read-only)
//   __syncthreads, __syncwarp, __shfl*_sync,    yield points: the fiber waits until every thread they name has
//   __ballot/__any/__all_sync                   arrived; a barrier or mask that cannot complete is an error naming
//                                               the kernel, block, thread and source line (never a hang)
//   __shared__                                  `static thread_local`: one copy per host thread, and every fiber
//                                               of a block runs on one host thread while blocks running at the same
//                                               time run on different ones, so each running block has its own copy
//                                               (as on a GPU, a block must not rely on what an earlier one left)
//   dynamic shared memory                       EK_DYNAMIC_SHARED (cuda_utils.cuh): a per-host-thread buffer,
//                                               filled with 0xff bytes (NaN floats) at the start of every block
//   atomics                                     std::atomic_ref: blocks run in parallel on host threads
// Approximate device intrinsics are emulated with the exact (correctly rounded) function: __expf, __exp10f,
// __logf, __log2f, __fdividef, __frcp_rn, __fsqrt_rn, rsqrtf (on a GPU these differ by a few ulp).
#pragma once
#include <math.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <type_traits>

#include "sim/cuda_sim_half.h"
#include "sim/cuda_sim_host.h"
#include "sim/cuda_sim_types.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))

// __PRETTY_FUNCTION__ names the kernel K; at global scope, so that the name comes fully qualified.
template <auto K>
const char* ek_sim_kernel_name() { return __PRETTY_FUNCTION__; }

namespace eurokernels::sim {

using Site = std::source_location;

struct BlockInfo {
  uint3 block_idx;
  dim3 block_dim, grid_dim;
};
// Set by the scheduler before it switches to a fiber. Fibers never migrate between host threads.
extern thread_local const uint3* tls_thread_idx;
extern thread_local const BlockInfo* tls_block;

// ---- runtime entry points (cuda_sim.cpp)
void block_barrier(const Site& site);
// A point where the seeded schedule may switch to another thread (global loads/stores, atomics); free otherwise.
void memory_point();
char* dynamic_shared();

enum class WarpOp : uint8_t { Sync, Shfl, ShflUp, ShflDown, ShflXor, Ballot, Any, All, Mma, Ldmatrix };
// One lane's part of a warp collective: its value and argument in, its result out (data: op-specific pointer).
struct LaneArg {
  uint64_t value = 0;
  int32_t arg = 0, width = 32;
  uint64_t result = 0;
  void* data = nullptr;
};
void warp_collective(WarpOp op, unsigned mask, LaneArg& a, const Site& site);

// ---- warp matrix instructions (cuda_sim_warp.cpp), reached through csrc/cuda_mma.cuh
void mma_m16n8k16(bool bf16, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4],
                  const Site& site);
void ldmatrix(int num, bool trans, uint32_t* regs, const void* row, const Site& site);
void cp_async(void* dst, const void* src, int cp_bytes, int src_bytes, const Site& site);
void cp_async_commit();
void cp_async_wait(int pending);

// ---- launches
struct Kernel {
  const char* name;  // the instantiation, e.g. eurokernels::rms_norm::rms_norm_fwd_kernel<float, float, 4>
  int max_dynamic_smem = 48 * 1024;
  int registers[2] = {0, 0};  // per thread on sm_80 / sm_90, read from the GPU build's cubins (0: unknown)
};
// pretty_function: __PRETTY_FUNCTION__ of ek_sim_kernel_name<K>(), parsed for the name; address: K itself.
Kernel& register_kernel(const char* pretty_function, const void* address);
void launch(Kernel& k, dim3 grid, dim3 block, size_t smem, void (*body)(const void*), const void* ctx);
cudaError_t set_max_dynamic_smem(const void* kernel_address, int bytes);

// One registry entry per kernel instantiation, made when the module loads: `kernels()` lists what can run here.
template <auto K>
struct KernelEntry {
  static inline Kernel& entry = register_kernel(ek_sim_kernel_name<K>(), reinterpret_cast<const void*>(K));
};

template <auto K, typename... Args>
void launch(dim3 grid, dim3 block, size_t smem, Args... args) {
  auto run = [&] { K(args...); };  // each fiber calls the kernel: its parameters are that thread's copies
  using Run = decltype(run);
  launch(KernelEntry<K>::entry, grid, block, smem, [](const void* c) { (*static_cast<const Run*>(c))(); }, &run);
}

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffles move at most 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <typename T>
T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

template <typename T>
T shuffle(WarpOp op, unsigned mask, T v, int arg, int width, const Site& site) {
  LaneArg a;
  a.value = to_bits(v);
  a.arg = arg;
  a.width = width;
  warp_collective(op, mask, a, site);
  return from_bits<T>(a.result);
}

}  // namespace eurokernels::sim

// cudaFuncSetAttribute(kernel<...>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes): the opt-in to more than
// 48 KB of dynamic shared memory, refused past the simulated architecture's limit as on the device.
template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return eurokernels::sim::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value);
}

#define threadIdx (*::eurokernels::sim::tls_thread_idx)
#define blockIdx (::eurokernels::sim::tls_block->block_idx)
#define blockDim (::eurokernels::sim::tls_block->block_dim)
#define gridDim (::eurokernels::sim::tls_block->grid_dim)
constexpr int warpSize = 32;

// ---- synchronization
inline void __syncthreads(const std::source_location& s = std::source_location::current()) {
  eurokernels::sim::block_barrier(s);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const std::source_location& s = std::source_location::current()) {
  eurokernels::sim::LaneArg a;
  eurokernels::sim::warp_collective(eurokernels::sim::WarpOp::Sync, mask, a, s);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---- warp shuffles and votes (width: a power of two <= 32, the segment the source lane is taken in)
template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32,
               const std::source_location& s = std::source_location::current()) {
  return eurokernels::sim::shuffle(eurokernels::sim::WarpOp::Shfl, mask, v, src, width, s);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                 const std::source_location& s = std::source_location::current()) {
  return eurokernels::sim::shuffle(eurokernels::sim::WarpOp::ShflUp, mask, v, int(delta), width, s);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                   const std::source_location& s = std::source_location::current()) {
  return eurokernels::sim::shuffle(eurokernels::sim::WarpOp::ShflDown, mask, v, int(delta), width, s);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                  const std::source_location& s = std::source_location::current()) {
  return eurokernels::sim::shuffle(eurokernels::sim::WarpOp::ShflXor, mask, v, lane_mask, width, s);
}
inline unsigned __ballot_sync(unsigned mask, int pred,
                              const std::source_location& s = std::source_location::current()) {
  return unsigned(eurokernels::sim::shuffle(eurokernels::sim::WarpOp::Ballot, mask, unsigned(pred != 0), 0, 32, s));
}
inline int __any_sync(unsigned mask, int pred, const std::source_location& s = std::source_location::current()) {
  return int(eurokernels::sim::shuffle(eurokernels::sim::WarpOp::Any, mask, unsigned(pred != 0), 0, 32, s));
}
inline int __all_sync(unsigned mask, int pred, const std::source_location& s = std::source_location::current()) {
  return int(eurokernels::sim::shuffle(eurokernels::sim::WarpOp::All, mask, unsigned(pred != 0), 0, 32, s));
}

// ---- atomics (memory points, so that the seeded schedule interleaves around them)
template <typename T>
T atomicAdd(T* p, T v) {
  eurokernels::sim::memory_point();
  return std::atomic_ref<T>(*p).fetch_add(v);
}
template <typename T>
T atomicSub(T* p, T v) {
  eurokernels::sim::memory_point();
  return std::atomic_ref<T>(*p).fetch_sub(v);
}
template <typename T>
T atomicExch(T* p, T v) {
  eurokernels::sim::memory_point();
  return std::atomic_ref<T>(*p).exchange(v);
}
template <typename T>
T atomicCAS(T* p, T expected, T desired) {
  eurokernels::sim::memory_point();
  std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired);
  return expected;  // the old value, whether or not it matched
}
namespace eurokernels::sim {
// Replaces *p by v when better(v, *p), atomically; returns the old value.
template <typename T, typename Better>
T atomic_replace_if(T* p, T v, Better better) {
  memory_point();
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (better(v, old) && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
}  // namespace eurokernels::sim
template <typename T>
T atomicMax(T* p, T v) {
  return eurokernels::sim::atomic_replace_if(p, v, [](T a, T b) { return b < a; });
}
template <typename T>
T atomicMin(T* p, T v) {
  return eurokernels::sim::atomic_replace_if(p, v, [](T a, T b) { return a < b; });
}

// ---- math: CUDA's overloads and intrinsics (approximate ones exact here: see the header comment)
template <typename T>
  requires std::is_integral_v<T>
inline T min(T a, T b) { return a < b ? a : b; }
template <typename T>
  requires std::is_integral_v<T>
inline T max(T a, T b) { return a < b ? b : a; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return x != x ? 0.f : fminf(fmaxf(x, 0.f), 1.f); }
inline float __int_as_float(int i) { return eurokernels::sim::from_bits<float>(uint32_t(i)); }
inline int __float_as_int(float f) { return int(eurokernels::sim::f32_bits(f)); }
inline float __uint_as_float(unsigned u) { return eurokernels::sim::from_bits<float>(u); }
inline unsigned __float_as_uint(float f) { return eurokernels::sim::f32_bits(f); }
