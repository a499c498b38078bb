// Attention kernels for head dims in the 256 class, fp16 (one instantiation per file: the build parallelizes).
#include "attention/attention_kernels.cuh"

namespace eurokernels::attention {
EK_ATTENTION_INSTANTIATE(__half, 256)
}  // namespace eurokernels::attention
