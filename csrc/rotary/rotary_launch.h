// Plain-C++ interface between the torch binding (rotary_cuda.cpp) and the CUDA kernel (rotary.cu).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace eurokernels::rotary {

struct Params {
  const void* q;       // [batch, seqlen, n_q_heads, head_dim], strides sq (batch, seq, head), unit along head_dim
  const void* k;       // [batch, seqlen, n_k_heads, head_dim], strides sk
  void* q_out;         // q's shape, strides sqo (q itself when in place)
  void* k_out;         // k's shape, strides sko
  const void* cos;     // [n_positions, half] contiguous, fp32 or q's dtype
  const void* sin;
  const int64_t* pos;  // [batch * seqlen] explicit positions, or nullptr
  const int32_t* cu;   // [n_seqs + 1] packed sequence offsets, or nullptr
  int64_t n_seqs, batch, seqlen, n_q_heads, n_k_heads, head_dim, half, n_positions;
  int64_t sq[3], sk[3], sqo[3], sko[3];
  bool interleaved;    // GPT-J pairs (2i, 2i + 1) instead of NeoX (i, i + half)
  bool conjugate;      // rotate by -theta: the backward
  bool copy_pass;      // copy features past 2 * half (out of place with partial rotary)
  int dtype;           // eurokernels::cuda::DType of q / k
  bool table_fp32;     // cos / sin are fp32 (else q's dtype)
};

void launch(const Params& p, cudaStream_t stream);

}  // namespace eurokernels::rotary
