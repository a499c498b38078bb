// The simulation's controls, for the host side (bindings, cuda_utils_host.h): the simulated device, the thread
// schedule, launch records and the sticky launch error. Plain C++: no CUDA built-ins, no torch.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "sim/cuda_sim_types.h"

namespace eurokernels::sim {

// The simulated GPU: 80 (A100: 108 SMs, 163 KB opt-in shared memory) or 90 (H100: 132 SMs, 227 KB). Default 90.
void set_arch(int sm);
int arch();
int sm_count();
// The largest gridDim.x a launch may use (2^31 - 1 on every GPU since sm_30). Tests lower it to drive the kernels'
// grid-stride loops with a handful of rows; launchers size their grids from it (cuda_utils.cuh: grid_limit_x).
void set_max_grid_x(int64_t n);
int64_t max_grid_x();

// How the fibers of a block interleave: "rr" (round-robin, ascending thread index), "reverse" (descending), or
// "seed:N" (a seeded random pick at every yield point, with extra yield points at global loads / stores and
// atomics). Each is deterministic; a kernel whose result differs between them has an ordering race.
void set_schedule(const std::string& spec);
std::string schedule();

struct LaunchRecord {
  std::string kernel;
  dim3 grid, block;
  size_t smem;
  std::string error;  // empty when the launch was accepted
};
// record: keep a LaunchRecord per launch; run: execute launches (false: check and record only, a dry run).
void set_capture(bool record, bool run);
std::vector<LaunchRecord> take_records();

// The first launch error since the last call (a refused configuration or a failure inside a kernel), "" if none:
// what cudaGetLastError reports on a GPU, as a message naming the kernel, block and thread.
std::string take_launch_error();

// Every kernel instantiation compiled into this module (one entry per template instantiation).
std::vector<std::string> kernel_names();

// The registers per thread the GPU build's cubin gives `kernel` (its name without the leading "eurokernels::", as
// python -m eurokernels.inspect prints it: "rms_norm::rms_norm_fwd_kernel<float, float, 4>") on sm_`arch`: a
// launch whose block needs more than an SM's 65536 registers is then refused, as on the GPU. False if unknown.
bool set_kernel_registers(int arch, const std::string& kernel, int registers);

}  // namespace eurokernels::sim
