// Launchers of the runtime's test kernels (sim_test_kernels.cu), for sim_bindings.cpp. Raw pointers, no torch.
#pragma once
#include <cstddef>
#include <cstdint>

#include "sim/cuda_sim_types.h"

namespace eurokernels::sim::tests {

void barrier_misuse(int mode, int* out);  // mode 0: half exit; 1: divergent barriers; 2: one early return; 3: fine
void warp_ops(int* out, unsigned mask, int width);
int launch_probe(dim3 grid, dim3 block, size_t smem, int optin_bytes, int* out);  // -> cudaFuncSetAttribute's status
void shared_memory(int* out, int blocks, int threads);
void atomics(int* counter, float* sum, int* max_tid, int blocks, int threads);
void race(int* flag, int* seen, int threads);

}  // namespace eurokernels::sim::tests
