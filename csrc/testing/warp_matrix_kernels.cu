// Test kernels of the warp matrix wrappers (csrc/cuda_mma.cuh), built into both modules: nvcc compiles their inline
// PTX for sm_80 / sm_90 (and test_aot checks the cubins), the simulation runs them against a plain matmul or copy
// (tests/test_cuda_sim.py). One warp each.
#include "cuda_mma.cuh"
#include "testing/warp_matrix_kernels.h"

namespace eurokernels::testing {
namespace {

using namespace eurokernels::cuda;

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
  mma_m16n8k16<T>(rd, ra, rb, rc);
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
  ldmatrix<4, false>(ra, sa + (lane % 16) * 16 + (lane / 16) * 8);
  const int l = lane % 16;
  if (b_nk) {
    ldmatrix<2, false>(rb, sb + (l % 8) * 16 + (l / 8) * 8);
  } else {
    ldmatrix<2, true>(rb, sb + l * 8);
  }
  float rc[4], rd[4];
  for (int i = 0; i < 4; ++i) rc[i] = c[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
  mma_m16n8k16<T>(rd, ra, rb, rc);
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
  ldmatrix<N, TRANS>(r, s + row * 8);
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
  cp_async<16>(s16 + lane * 4, src + lane * 4, lane == 31 ? src_bytes_last : 16);
  cp_async_commit();
  cp_async<8>(s8 + lane * 2, src + 128 + lane * 2);
  cp_async<4>(s4 + lane, src + 192 + lane);
  cp_async_commit();
  cp_async_wait<1>();
  for (int k = 0; k < 4; ++k) out0[lane * 4 + k] = s16[lane * 4 + k];
  cp_async_wait<0>();
  __syncthreads();
  const int o = (lane + 1) % 32;
  out1[lane * 3] = s8[o * 2];
  out1[lane * 3 + 1] = s8[o * 2 + 1];
  out1[lane * 3 + 2] = s4[o];
}

}  // namespace

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

}  // namespace eurokernels::testing
