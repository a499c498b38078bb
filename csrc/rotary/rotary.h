// Rotary entry points. q, k: 4-D [batch, seqlen, heads, head_dim] with a unit stride along head_dim (any other
// strides). q_out, k_out: the same shapes, written; they may be q and k themselves (in place), or absent: then
// fresh contiguous outputs are allocated here, the one place that decides how outputs are allocated. Returns
// (q_out, k_out). cos, sin: [max_positions, rotary_dim / 2] contiguous, fp32 or q's dtype. position_ids: int64
// [batch * seqlen] contiguous; cu_seqlens: int32 [n_seqs + 1] contiguous (packed layout: batch == 1). conjugate
// rotates by -theta (the backward). The Python op (eurokernels/ops/rotary.py) validates the arguments and, on CPU,
// the position values.
#pragma once
#include <ATen/ATen.h>
#include <optional>
#include <tuple>

#include "common.h"

namespace eurokernels::rotary {

using Outputs = std::tuple<at::Tensor, at::Tensor>;

Outputs forward_cpu(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& q_out,
                   const std::optional<at::Tensor>& k_out, const at::Tensor& cos, const at::Tensor& sin,
                   const std::optional<at::Tensor>& position_ids, const std::optional<at::Tensor>& cu_seqlens,
                   bool interleaved, bool conjugate);

Outputs forward_cuda(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& q_out,
                    const std::optional<at::Tensor>& k_out, const at::Tensor& cos, const at::Tensor& sin,
                    const std::optional<at::Tensor>& position_ids, const std::optional<at::Tensor>& cu_seqlens,
                    bool interleaved, bool conjugate);

// The argument contract of both entry points (shapes, strides, dtypes), checked once for both.
inline void check_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_out, const at::Tensor& k_out,
                       const at::Tensor& cos, const at::Tensor& sin, const std::optional<at::Tensor>& position_ids,
                       const std::optional<at::Tensor>& cu_seqlens) {
  CHECK_DIM(q, 4);
  CHECK_DIM(k, 4);
  CHECK_SAME_SHAPE(q_out, q);
  CHECK_SAME_SHAPE(k_out, k);
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3),
              "k must have q's batch, seqlen and head_dim");
  for (const at::Tensor* t : {&k, &q_out, &k_out}) CHECK_DTYPE(*t, q.scalar_type());
  CHECK_LASTDIM_CONTIGUOUS(q);
  CHECK_LASTDIM_CONTIGUOUS(k);
  CHECK_LASTDIM_CONTIGUOUS(q_out);
  CHECK_LASTDIM_CONTIGUOUS(k_out);
  CHECK_DIM(cos, 2);
  CHECK_SAME_SHAPE(sin, cos);
  CHECK_CONTIGUOUS(cos);
  CHECK_CONTIGUOUS(sin);
  CHECK_DTYPE(sin, cos.scalar_type());
  TORCH_CHECK(cos.scalar_type() == at::kFloat || cos.scalar_type() == q.scalar_type(),
              "cos must be float32 or q's dtype");
  TORCH_CHECK(q.size(3) % 2 == 0 && cos.size(1) >= 1 && 2 * cos.size(1) <= q.size(3),
              "head_dim must be even and cos must be [max_positions, rotary_dim / 2] with rotary_dim <= head_dim");
  if (position_ids) {
    CHECK_DTYPE(*position_ids, at::kLong);
    CHECK_CONTIGUOUS(*position_ids);
    TORCH_CHECK(position_ids->numel() == q.size(0) * q.size(1), "position_ids must have batch * seqlen elements");
  }
  if (cu_seqlens) {
    CHECK_DTYPE(*cu_seqlens, at::kInt);
    CHECK_CONTIGUOUS(*cu_seqlens);
    CHECK_DIM(*cu_seqlens, 1);
    TORCH_CHECK(cu_seqlens->numel() >= 2 && q.size(0) == 1, "cu_seqlens needs >= 2 offsets and batch == 1");
  }
}

}  // namespace eurokernels::rotary
