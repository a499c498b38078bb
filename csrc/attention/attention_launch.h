// Plain-C++ interface between the torch binding (attention_cuda.cpp) and the CUDA kernels (attention.cu and the
// per head-dim / dtype instantiations under attention/inst/).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>

namespace eurokernels::attention {

// The packed contract (attention.h): q [total_q, hq, d], k/v [total_k, hk, d], unit stride along d, every pointer
// and token / head stride 16-byte aligned (the binding copies inputs that are not: cp.async moves 16 bytes).
// Outputs are contiguous: out / dq [total_q, hq, d], dk / dv [total_k, hk, d], lse / delta [hq, total_q] fp32.
struct Params {
  const void* q;
  const void* k;
  const void* v;
  const int* cu_q;  // int32 [n_docs + 1], on the device
  const int* cu_k;
  int64_t q_tok, q_head, k_tok, k_head, v_tok, v_head;  // strides in elements
  int64_t total_q;
  int n_docs, hq, hk, d, max_sq, max_sk;
  int left, right;  // window, -1: unbounded (causal: right = 0)
  float scale, softcap;
  int dtype;  // eurokernels::cuda::DType (float16 or bfloat16)

  // forward outputs
  void* out;
  float* lse;

  // backward inputs (out, lse: the forward's) and outputs
  const void* dout;
  const void* o;
  int64_t do_tok, do_head, o_tok, o_head;
  const float* lse_in;
  float* delta;  // scratch [hq, total_q]: rowsum(dO * O)
  void* dq;
  void* dk;
  void* dv;
};

// The compiled head-dim classes: a head dim d runs in the smallest class >= d, its padded columns zero-filled.
int head_dim_class(int d);

// The dynamic shared memory (bytes) a launch of `kernel` ("attention_fwd_kernel", "attention_bwd_dq_kernel",
// "attention_bwd_dkdv_kernel"; others: 0) takes for a head-dim class and element size: what the launchers pass,
// for `python -m eurokernels.inspect` to hold against each architecture's limit.
int64_t dynamic_smem(const char* kernel, int head_dim_class, int elem_bytes);

void launch_forward(const Params& p, cudaStream_t stream);
void launch_backward(const Params& p, cudaStream_t stream);

}  // namespace eurokernels::attention
