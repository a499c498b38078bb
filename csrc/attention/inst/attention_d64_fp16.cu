// Attention kernels for head dims in the 64 class, fp16 (one instantiation per file: the build parallelizes).
#include "attention/attention_kernels.cuh"

namespace eurokernels::attention {
EK_ATTENTION_INSTANTIATE(__half, 64)
}  // namespace eurokernels::attention
