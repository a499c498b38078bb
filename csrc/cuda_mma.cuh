// Warp-level matrix instructions for the tensor-core kernels (sm_80+): one wrapper per PTX instruction. On the GPU
// each is the inline PTX; in the simulation build (csrc/sim) the same call is emulated from the PTX ISA's fragment
// layouts (csrc/sim/cuda_sim_warp.cpp spells them out), so a kernel's fragment indexing runs in CI.
//   mma_m16n8k16<T>    D (16x8 fp32) = A (16x16, row) * B (16x8, col) + C; T = __half or __nv_bfloat16
//   ldmatrix<N, TRANS> N (1, 2, 4) 8x8 matrices of 16-bit values from shared memory into fragments
//   cp_async<BYTES>    an asynchronous 4/8/16-byte global -> shared copy (zero-filled past src_bytes), completed by
//                      cp_async_commit() + cp_async_wait<PENDING>() (groups still allowed in flight)
#pragma once
#include <cstdint>
#include <type_traits>

#include "cuda_utils.cuh"

#if defined(EUROKERNELS_CUDA_SIM)
#define EK_SITE , std::source_location::current()
#else
#define EK_SITE
#endif

namespace eurokernels::cuda {

template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                             const float (&c)[4]) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "mma_m16n8k16: fp16 or bf16 inputs");
#if defined(EUROKERNELS_CUDA_SIM)
  sim::mma_m16n8k16(std::is_same_v<T, __nv_bfloat16>, d, a, b, c EK_SITE);
#else
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%11,%12,%13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
                   "f"(c[2]), "f"(c[3]));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%11,%12,%13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
                   "f"(c[2]), "f"(c[3]));
  }
#endif
}

// row: this lane's row address (16-byte aligned, shared memory): lane 8j + r gives row r of matrix j < N.
template <int N, bool TRANS>
__device__ __forceinline__ void ldmatrix(uint32_t (&r)[N], const void* row) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix: x1, x2 or x4");
#if defined(EUROKERNELS_CUDA_SIM)
  sim::ldmatrix(N, TRANS, r, row EK_SITE);
#else
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (N == 1 && !TRANS) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(addr));
  } else if constexpr (N == 1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(addr));
  } else if constexpr (N == 2 && !TRANS) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
  } else if constexpr (N == 2) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
  } else if constexpr (!TRANS) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
  }
#endif
}

// Copies BYTES from global `src` to shared `dst` (both aligned to BYTES); only the first src_bytes are read, the
// rest of dst is zero-filled (for tiles that overhang the tensor's end).
template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, const void* src, int src_bytes = BYTES) {
  static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(EUROKERNELS_CUDA_SIM)
  sim::cp_async(dst, src, BYTES, src_bytes EK_SITE);
#else
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  if constexpr (BYTES == 16) {  // .cg: bypass L1 (only for 16 bytes)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(src), "r"(src_bytes));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(addr), "l"(src), "n"(BYTES),
                 "r"(src_bytes));
  }
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(EUROKERNELS_CUDA_SIM)
  sim::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most PENDING committed groups of this thread are still in flight (0: all have landed). Other
// threads see the data only after a barrier.
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
#if defined(EUROKERNELS_CUDA_SIM)
  sim::cp_async_wait(PENDING);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING));
#endif
}

}  // namespace eurokernels::cuda

#undef EK_SITE
