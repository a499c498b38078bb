// Rotary CUDA entry point: validate, fill the plain params struct, launch on the current stream. Compiled by g++
// (torch headers here, not in the .cu, keeps nvcc fast). No value checks (positions, cu_seqlens): they would
// synchronize the stream; the kernel writes NaN for tokens without a valid position instead.
#include "common.h"
#include "cuda_utils_host.h"
#include "rotary/rotary.h"
#include "rotary/rotary_launch.h"

namespace eurokernels::rotary {

Outputs forward_cuda(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& q_out_arg,
                   const std::optional<at::Tensor>& k_out_arg, const at::Tensor& cos, const at::Tensor& sin,
                   const std::optional<at::Tensor>& position_ids, const std::optional<at::Tensor>& cu_seqlens,
                   bool interleaved, bool conjugate) {
  const cuda::DeviceGuard guard(q.device());
  CHECK_DIM(q, 4);
  CHECK_DIM(k, 4);
  const at::Tensor q_out = q_out_arg ? *q_out_arg : at::empty(q.sizes(), q.options());
  const at::Tensor k_out = k_out_arg ? *k_out_arg : at::empty(k.sizes(), k.options());
  cuda::check_same_device(q, "q", {{&k, "k"}, {&q_out, "q_out"}, {&k_out, "k_out"}, {&cos, "cos"}, {&sin, "sin"},
                                   {cuda::maybe(position_ids), "position_ids"},
                                   {cuda::maybe(cu_seqlens), "cu_seqlens"}});
  check_args(q, k, q_out, k_out, cos, sin, position_ids, cu_seqlens);
  TORCH_CHECK(q.size(0) * q.size(1) <= INT32_MAX, "rotary: more than 2^31 - 1 tokens");
  Params p{};
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.q_out = q_out.data_ptr();
  p.k_out = k_out.data_ptr();
  p.cos = cos.const_data_ptr();
  p.sin = sin.const_data_ptr();
  p.pos = position_ids ? position_ids->const_data_ptr<int64_t>() : nullptr;
  p.cu = cu_seqlens ? cu_seqlens->const_data_ptr<int32_t>() : nullptr;
  p.n_seqs = cu_seqlens ? cu_seqlens->numel() - 1 : 0;
  p.batch = q.size(0);
  p.seqlen = q.size(1);
  p.n_q_heads = q.size(2);
  p.n_k_heads = k.size(2);
  p.head_dim = q.size(3);
  p.half = cos.size(1);
  p.n_positions = cos.size(0);
  for (int d = 0; d < 3; ++d) {
    p.sq[d] = q.stride(d);
    p.sk[d] = k.stride(d);
    p.sqo[d] = q_out.stride(d);
    p.sko[d] = k_out.stride(d);
  }
  p.interleaved = interleaved;
  p.conjugate = conjugate;
  // Out of place unless the outputs are the inputs (compared per side: an empty side may have a null pointer).
  p.copy_pass = (q_out.data_ptr() != q.data_ptr() || k_out.data_ptr() != k.data_ptr()) && 2 * p.half < p.head_dim;
  p.dtype = cuda::dtype_of(q);
  p.table_fp32 = cos.scalar_type() == at::kFloat;
  launch(p, cuda::current_stream());
  cuda::check_launch();
  return {q_out, k_out};
}

}  // namespace eurokernels::rotary
