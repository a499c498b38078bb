// Cross-entropy CUDA entry point: validate, allocate, and launch on the current stream (same contract as
// forward_backward_cpu in cross_entropy.h, except that out-of-range labels give NaN rows instead of an error).
#include "cross_entropy/cross_entropy.h"
#include "cross_entropy/cross_entropy_checks.h"
#include "cross_entropy/cross_entropy_launch.h"
#include "cuda_utils_host.h"

namespace eurokernels::cross_entropy {

std::tuple<at::Tensor, at::Tensor> forward_backward_cuda(
    const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& lse_in,
    const std::optional<at::Tensor>& row_scale, const std::optional<at::Tensor>& dlse,
    const std::optional<at::Tensor>& grad_out, int64_t ignore_index, double label_smoothing, double z_loss,
    double softcap, int64_t vocab_start, int64_t vocab_total) {
  check_args(logits, labels, lse_in, row_scale, dlse, grad_out, cuda::kDeviceType);
  cuda::check_same_device(logits, "logits",
                          {{&labels, "labels"}, {cuda::maybe(lse_in), "lse_in"}, {cuda::maybe(row_scale), "row_scale"},
                           {cuda::maybe(dlse), "dlse"}, {cuda::maybe(grad_out), "grad_out"}});
  const int64_t rows = logits.size(0), n = logits.size(1);
  TORCH_CHECK(rows == 0 || n > 0, "logits must have at least one class");  // (no kernel would write loss / lse)
  const cuda::DeviceGuard guard(logits.device());
  const bool backward = lse_in.has_value();
  at::Tensor loss = at::empty({backward ? 0 : rows}, logits.options().dtype(at::kFloat));
  at::Tensor lse = backward ? *lse_in : at::empty({rows}, logits.options().dtype(at::kFloat));

  Params p{};
  p.x = logits.const_data_ptr();
  p.labels = labels.const_data_ptr<int64_t>();
  p.lse_in = backward ? lse_in->const_data_ptr<float>() : nullptr;
  p.row_scale = row_scale ? row_scale->const_data_ptr<float>() : nullptr;
  p.dlse = dlse ? dlse->const_data_ptr<float>() : nullptr;
  p.loss = backward ? nullptr : loss.mutable_data_ptr<float>();
  p.lse = backward ? nullptr : lse.mutable_data_ptr<float>();
  p.grad = grad_out ? grad_out->data_ptr() : nullptr;
  p.rows = rows;
  p.n = n;
  p.stride_x = logits.stride(0);
  p.stride_g = grad_out ? grad_out->stride(0) : 0;
  p.opts = Options{ignore_index, vocab_start, vocab_total, static_cast<float>(label_smoothing),
                   static_cast<float>(z_loss), static_cast<float>(softcap)};
  p.dtype = cuda::dtype_of(logits);
  launch(p, cuda::current_stream());
  cuda::check_launch();
  return {loss, lse};
}

}  // namespace eurokernels::cross_entropy
