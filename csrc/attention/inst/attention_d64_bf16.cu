// Attention kernels for head dims in the 64 class, bf16 (one instantiation per file: the build parallelizes).
#include "attention/attention_kernels.cuh"

namespace eurokernels::attention {
EK_ATTENTION_INSTANTIATE(__nv_bfloat16, 64)
}  // namespace eurokernels::attention
