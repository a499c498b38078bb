// Shared between the runtime's two files (cuda_sim.cpp: fibers, scheduler, launches; cuda_sim_warp.cpp: what each
// warp collective computes). Not included by kernels.
#pragma once
#include <string>

#include "sim/cuda_sim.h"

namespace eurokernels::sim {

// The lanes of one warp collective that has just completed: args[l] is lane l's part (nullptr outside the mask).
// Returns "" or an error message (e.g. a shuffle reading a lane outside its mask).
std::string complete_collective(WarpOp op, unsigned mask, LaneArg* const (&args)[32]);

const char* op_name(WarpOp op);

// Ends the calling fiber's block with `what` (the runtime adds kernel, block, thread); never returns.
[[noreturn]] void fail(const std::string& what, const Site& site);

}  // namespace eurokernels::sim
