// Attention entry points (packed form). q [total_q, hq, d], k/v [total_k, hk, d] with a unit stride along d (any
// token and head strides), int32 cu_seqlens_q/k [n_docs + 1]; window_left/right = -1 for unbounded (causal is
// window_right = 0). Outputs are fresh contiguous tensors: out [total_q, hq, d], lse [hq, total_q] fp32.
// The Python op (eurokernels/ops/attention.py) validates the user's arguments and builds the packed views.
#pragma once
#include <ATen/ATen.h>
#include <tuple>

namespace eurokernels::attention {

// -> (out, lse)
std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k,
                                               int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale,
                                               int64_t window_left, int64_t window_right, double softcap);
// -> (dq, dk, dv), deterministic for a given thread count
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& dout, const at::Tensor& q,
                                                            const at::Tensor& k, const at::Tensor& v,
                                                            const at::Tensor& out, const at::Tensor& lse,
                                                            const at::Tensor& cu_seqlens_q,
                                                            const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                                                            int64_t max_seqlen_k, double softmax_scale,
                                                            int64_t window_left, int64_t window_right, double softcap);

// The same on the CUDA kernels (attention_cuda.cpp; float16 / bfloat16 only): deterministic, no atomics.
std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k,
                                                int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale,
                                                int64_t window_left, int64_t window_right, double softcap);
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& dout, const at::Tensor& q,
                                                             const at::Tensor& k, const at::Tensor& v,
                                                             const at::Tensor& out, const at::Tensor& lse,
                                                             const at::Tensor& cu_seqlens_q,
                                                             const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                                                             int64_t max_seqlen_k, double softmax_scale,
                                                             int64_t window_left, int64_t window_right,
                                                             double softcap);

}  // namespace eurokernels::attention
