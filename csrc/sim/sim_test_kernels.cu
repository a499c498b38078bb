// Test kernels of the simulation runtime itself (tests/test_cuda_sim.py), compiled into eurokernels._cuda_sim only:
// misuse the runtime must report (divergent barriers, shuffles outside their mask, refused launches), and
// references for what it must get right (shuffles and votes with partial masks, per-block shared memory, atomics,
// mma / ldmatrix / cp.async against a plain matmul or copy, schedules that reveal a race).
#include "cuda_mma.cuh"
#include "cuda_utils.cuh"
#include "sim/sim_test_kernels.h"

namespace eurokernels::sim::tests {
namespace {

using namespace eurokernels::cuda;

__global__ void barrier_misuse_kernel(int mode, int* out) {
  const int t = threadIdx.x;
  if (mode == 0) {  // half the block exits, the other half waits at a barrier
    if (t >= 16) return;
    __syncthreads();
  } else if (mode == 1) {  // two barriers in divergent branches
    if (t % 2) {
      __syncthreads();
    } else {
      __syncthreads();
    }
  } else if (mode == 2) {  // one thread returns early
    if (t == 5) return;
    __syncthreads();
  } else {  // correct: every thread passes two barriers
    __syncthreads();
    __syncthreads();
  }
  out[t] = 1;
}

// Lanes in `mask` exchange lane * 10 (k = 0..3), vote (4..6) and sync (7); the others write -1 and exit.
__global__ void warp_ops_kernel(int* out, unsigned mask, int width) {
  const int lane = threadIdx.x;
  int* o = out + lane * 8;
  if (!(mask >> lane & 1)) {
    for (int k = 0; k < 8; ++k) o[k] = -1;
    return;
  }
  const int v = lane * 10;
  o[0] = __shfl_sync(mask, v, lane + 1, width);
  o[1] = __shfl_up_sync(mask, v, 1, width);
  o[2] = __shfl_down_sync(mask, v, 1, width);
  o[3] = __shfl_xor_sync(mask, v, 1, width);
  o[4] = int(__ballot_sync(mask, lane % 3 == 0));
  o[5] = __any_sync(mask, lane == 7);
  o[6] = __all_sync(mask, lane != 7);
  __syncwarp(mask);
  o[7] = 1;
}

__global__ void probe_kernel(int* out) {
  EK_DYNAMIC_SHARED(int, smem);
  if (threadIdx.x == 0) smem[0] = int(blockIdx.x);
  if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) out[0] = smem[0] + 1;
}

// out[(b * threads + t) * 2 + {0, 1}] = what this block's static and dynamic shared memory hold after a barrier.
__global__ void shared_memory_kernel(int* out) {
  __shared__ int s_static[1];
  EK_DYNAMIC_SHARED(int, s_dyn);
  const int t = threadIdx.x, b = blockIdx.x, n = blockDim.x;
  if (t == 0) s_static[0] = b;
  s_dyn[t] = b * 1000 + t;
  __syncthreads();
  out[(int64_t(b) * n + t) * 2] = s_static[0];
  out[(int64_t(b) * n + t) * 2 + 1] = s_dyn[(t + 1) % n];
}

__global__ void atomics_kernel(int* counter, float* sum, int* max_tid) {
  atomicAdd(counter, 1);
  atomicAdd(sum, 0.5f);
  atomicMax(max_tid, int(blockIdx.x * blockDim.x + threadIdx.x));
}

// One warp: fragments loaded from global memory by the PTX ISA's formulas (csrc/sim/cuda_sim_warp.cpp), D stored
// by the C/D formula. a: [16, 16] row major, b: [16, 8] (k, n) row major, c, d: [16, 8] fp32.
template <typename T>
__global__ void mma_fragments_kernel(const uint16_t* a, const uint16_t* b, const float* c, float* d) {
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  uint32_t ra[4], rb[2];
  float rc[4], rd[4];
  auto pack = [](uint16_t lo, uint16_t hi) { return uint32_t(lo) | uint32_t(hi) << 16; };
  for (int r = 0; r < 4; ++r) {  // a0..a7 in pairs
    const int row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
    ra[r] = pack(a[row * 16 + col], a[row * 16 + col + 1]);
  }
  for (int r = 0; r < 2; ++r) {
    const int k = 2 * t + 8 * r;
    rb[r] = pack(b[k * 8 + g], b[(k + 1) * 8 + g]);
  }
  for (int i = 0; i < 4; ++i) rc[i] = c[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
  cuda::mma_m16n8k16<T>(rd, ra, rb, rc);
  for (int i = 0; i < 4; ++i) d[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = rd[i];
}

// The usual tensor-core pattern: A and B staged in shared memory, fragments by ldmatrix (A: x4; B: x2.trans from a
// [k][n] tile, or x2 from an [n][k] tile), then mma. b_nk: b is [8, 16] (n, k) instead of [16, 8] (k, n).
template <typename T>
__global__ void mma_ldmatrix_kernel(const uint16_t* a, const uint16_t* b, const float* c, float* d, bool b_nk) {
  __shared__ __align__(16) uint16_t sa[16 * 16];
  __shared__ __align__(16) uint16_t sb[16 * 8];
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  for (int i = lane; i < 256; i += 32) sa[i] = a[i];
  for (int i = lane; i < 128; i += 32) sb[i] = b[i];
  __syncthreads();
  uint32_t ra[4], rb[2];
  cuda::ldmatrix<4, false>(ra, sa + (lane % 16) * 16 + (lane / 16) * 8);
  const int l = lane % 16;
  if (b_nk) {
    cuda::ldmatrix<2, false>(rb, sb + (l % 8) * 16 + (l / 8) * 8);
  } else {
    cuda::ldmatrix<2, true>(rb, sb + l * 8);
  }
  float rc[4], rd[4];
  for (int i = 0; i < 4; ++i) rc[i] = c[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
  cuda::mma_m16n8k16<T>(rd, ra, rb, rc);
  for (int i = 0; i < 4; ++i) d[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = rd[i];
}

// m: N 8x8 matrices of 16-bit values, row major, one after the other; out[lane * N + j] = register j of lane.
template <int N, bool TRANS>
__global__ void ldmatrix_kernel(const uint16_t* m, uint32_t* out) {
  __shared__ __align__(16) uint16_t s[4 * 64];
  const int lane = threadIdx.x;
  for (int i = lane; i < N * 64; i += 32) s[i] = m[i];
  __syncthreads();
  uint32_t r[N];
  const int row = lane < 8 * N ? lane : 0;  // lanes past 8N give no address; any aligned one will do
  cuda::ldmatrix<N, TRANS>(r, s + row * 8);
  for (int j = 0; j < N; ++j) out[lane * N + j] = r[j];
}

// One warp. Group 0: 16 bytes per lane (lane 31 reads only src_bytes_last of them, the rest zero-filled);
// group 1: 8 + 4 bytes per lane. out0[lane] = its own group-0 data after wait<1>; out1 = lane + 1's group-1 data
// after wait<0> and a barrier. src: 32 * 4 + 32 * 2 + 32 floats.
__global__ void cp_async_kernel(const float* src, float* out0, float* out1, int src_bytes_last) {
  __shared__ __align__(16) float s16[32 * 4];
  __shared__ __align__(16) float s8[32 * 2];
  __shared__ __align__(16) float s4[32];
  const int lane = threadIdx.x;
  cuda::cp_async<16>(s16 + lane * 4, src + lane * 4, lane == 31 ? src_bytes_last : 16);
  cuda::cp_async_commit();
  cuda::cp_async<8>(s8 + lane * 2, src + 128 + lane * 2);
  cuda::cp_async<4>(s4 + lane, src + 192 + lane);
  cuda::cp_async_commit();
  cuda::cp_async_wait<1>();
  for (int k = 0; k < 4; ++k) out0[lane * 4 + k] = s16[lane * 4 + k];
  cuda::cp_async_wait<0>();
  __syncthreads();
  const int o = (lane + 1) % 32;
  out1[lane * 3] = s8[o * 2];
  out1[lane * 3 + 1] = s8[o * 2 + 1];
  out1[lane * 3 + 2] = s4[o];
}

// Thread 0 reads what the last thread writes, with no barrier between: the value read depends on the schedule.
__global__ void race_kernel(int* flag, int* seen) {
  if (threadIdx.x == blockDim.x - 1) *flag = 1;
  if (threadIdx.x == 0) *seen = *flag;
}

}  // namespace

void barrier_misuse(int mode, int* out) { cuda::launch<barrier_misuse_kernel>(1, 32, 0, nullptr, mode, out); }

void warp_ops(int* out, unsigned mask, int width) { cuda::launch<warp_ops_kernel>(1, 32, 0, nullptr, out, mask, width); }

int launch_probe(dim3 grid, dim3 block, size_t smem, int optin_bytes, int* out) {
  const int status = int(cudaFuncSetAttribute(probe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin_bytes));
  cuda::launch<probe_kernel>(grid, block, smem, nullptr, out);
  return status;
}

void shared_memory(int* out, int blocks, int threads) {
  cuda::launch<shared_memory_kernel>(blocks, threads, threads * sizeof(int), nullptr, out);
}

void atomics(int* counter, float* sum, int* max_tid, int blocks, int threads) {
  cuda::launch<atomics_kernel>(blocks, threads, 0, nullptr, counter, sum, max_tid);
}

void mma(const uint16_t* a, const uint16_t* b, const float* c, float* d, bool bf16, int mode) {
  auto go = [&](auto tag) {
    using T = decltype(tag);
    if (mode == 0) {
      cuda::launch<mma_fragments_kernel<T>>(1, 32, 0, nullptr, a, b, c, d);
    } else {
      cuda::launch<mma_ldmatrix_kernel<T>>(1, 32, 0, nullptr, a, b, c, d, mode == 2);
    }
  };
  if (bf16) go(__nv_bfloat16{}); else go(__half{});
}

void ldmatrix_dump(const uint16_t* m, uint32_t* out, int num, bool trans) {
  auto go = [&](auto n, auto t) {
    cuda::launch<ldmatrix_kernel<decltype(n)::value, decltype(t)::value>>(1, 32, 0, nullptr, m, out);
  };
  auto with_n = [&](auto t) {
    if (num == 1) go(std::integral_constant<int, 1>{}, t);
    else if (num == 2) go(std::integral_constant<int, 2>{}, t);
    else go(std::integral_constant<int, 4>{}, t);
  };
  if (trans) with_n(std::true_type{}); else with_n(std::false_type{});
}

void cp_async_copy(const float* src, float* out0, float* out1, int src_bytes_last) {
  cuda::launch<cp_async_kernel>(1, 32, 0, nullptr, src, out0, out1, src_bytes_last);
}

void race(int* flag, int* seen, int threads) { cuda::launch<race_kernel>(1, threads, 0, nullptr, flag, seen); }

}  // namespace eurokernels::sim::tests
