// Cross-entropy entry points. logits: 2-D [rows, V] with a unit stride along V (any row stride); labels: [rows]
// int64. One function covers the three uses (see eurokernels/ops/cross_entropy.py):
//   forward              lse_in absent, grad_out absent     -> (loss, lse)
//   forward + gradient   lse_in absent, grad_out given      -> (loss, lse), gradient written in the same sweep
//   backward             lse_in given,  grad_out given      -> (empty, lse_in), gradient only
// grad_out ([rows, V], logits' dtype, unit stride along V) may be the logits themselves (in-place gradient).
// row_scale ([rows] fp32) is the upstream gradient of each row's loss, dlse ([rows] fp32) that of its lse.
#pragma once
#include <ATen/ATen.h>
#include <optional>
#include <tuple>

namespace eurokernels::cross_entropy {

std::tuple<at::Tensor, at::Tensor> forward_backward_cpu(
    const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& lse_in,
    const std::optional<at::Tensor>& row_scale, const std::optional<at::Tensor>& dlse,
    const std::optional<at::Tensor>& grad_out, int64_t ignore_index, double label_smoothing, double z_loss,
    double softcap, int64_t vocab_start, int64_t vocab_total);

std::tuple<at::Tensor, at::Tensor> forward_backward_cuda(
    const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& lse_in,
    const std::optional<at::Tensor>& row_scale, const std::optional<at::Tensor>& dlse,
    const std::optional<at::Tensor>& grad_out, int64_t ignore_index, double label_smoothing, double z_loss,
    double softcap, int64_t vocab_start, int64_t vocab_total);

// linear_cross_entropy's fp32 weight-gradient accumulation (accumulate_cpu.cpp): acc += part, or, with out (the
// last token chunk), out = round(acc + part) in part's dtype. acc fp32; all contiguous, one shape.
void accumulate_cpu(at::Tensor& acc, const at::Tensor& part, const std::optional<at::Tensor>& out);

}  // namespace eurokernels::cross_entropy
