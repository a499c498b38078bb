// Test kernels of the simulation runtime itself (tests/test_cuda_sim.py), compiled into eurokernels._cuda_sim only:
// misuse the runtime must report (divergent barriers, shuffles outside their mask, refused launches), and
// references for what it must get right (shuffles and votes with partial masks, per-block shared memory, atomics,
// schedules that reveal a race). The warp matrix wrappers' test kernels are in csrc/testing/ (both builds).
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

// Thread 0 reads what the last thread writes, with no barrier between: the value read depends on the schedule.
__global__ void race_kernel(int* flag, int* seen) {
  if (threadIdx.x == blockDim.x - 1) *flag = 1;
  if (threadIdx.x == 0) *seen = *flag;
}

}  // namespace

void barrier_misuse(int mode, int* out) { cuda::launch<barrier_misuse_kernel>(1, 32, 0, nullptr, mode, out); }

void warp_ops(int* out, unsigned mask, int width) {
  cuda::launch<warp_ops_kernel>(1, 32, 0, nullptr, out, mask, width);
}

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

void race(int* flag, int* seen, int threads) { cuda::launch<race_kernel>(1, threads, 0, nullptr, flag, seen); }

}  // namespace eurokernels::sim::tests
