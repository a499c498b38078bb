// Simulation build only (csrc/sim/README.md): stands in for the CUDA toolkit's <cuda_fp16.h>, so the same kernel sources
// compile as host C++. This directory is on the include path of eurokernels._cuda_sim alone.
#pragma once
#include "sim/cuda_sim_half.h"
