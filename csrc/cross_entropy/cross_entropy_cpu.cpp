// Cross-entropy on CPU. Per row: one sweep over memory for the log-sum-exp (online_stats, blockwise online
// softmax), and, when a gradient is asked for in the same call, a second sweep over the same row while it is still
// in L2 (a 128K-vocabulary bf16 row is 256 KB). Rows are spread over threads with at::parallel_for; each thread has
// its own 8 KB fp32 scratch. All offsets are int64 (rows * V passes 2^31 at 8192 x 262144).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "common.h"
#include "cpu_alloc.h"
#include "cpu_exp.h"
#include "cpu_vec.h"
#include "cross_entropy/cross_entropy.h"
#include "cross_entropy/cross_entropy_checks.h"
#include "cross_entropy/cross_entropy_common.h"
#include "online_softmax_cpu.h"

namespace eurokernels::cross_entropy {
namespace {

using cpu::kStep;
using cpu::Vec;

// dx_j = c.p * exp(z_j - lse) - c.u - c.t * [j == target], times (1 - (z_j / softcap)^2) under a soft cap.
// x and dx may be the same row (in-place gradient): every element is read before it is written, and the target
// element, whose true-class term is added in fp32 before the one rounding, is read first.
template <typename T>
void grad_row(const T* x, T* dx, int64_t n, float lse, const GradCoef& c, int64_t target, float softcap) {
  const float xt = target >= 0 ? static_cast<float>(x[target]) : 0.f;
  if (c.p == 0.f && c.u == 0.f && c.t == 0.f) {  // ignored row: a zero gradient
    cpu::fill_row(dx, n, 0.f);
    return;
  }
  if (std::isnan(lse)) {  // a NaN logit: a NaN row, as PyTorch (the vector exp on its own would propagate it too)
    cpu::fill_row(dx, n, lse);
    return;
  }
  auto scalar = [&](float v, float true_class) {
    const float t = softcap == 0.f ? 0.f : std::tanh(v / softcap);
    const float z = softcap == 0.f ? v : softcap * t;
    const float d = c.p * std::exp(z - lse) - c.u - true_class;
    return softcap == 0.f ? d : d * (1.f - t * t);
  };
#if EK_HAVE_AVX512
  if (cpu::avx512::enabled()) {
    if (softcap == 0.f) {
      cpu::avx512::exp_affine_row(x, dx, n, lse, c.p, c.u);
    } else {
      cpu::avx512::capped_grad_row(x, dx, n, lse, c.p, c.u, softcap);
    }
    if (target >= 0) dx[target] = static_cast<T>(scalar(xt, c.t));
    return;
  }
#endif
  const Vec vlse(lse), vp(c.p), vu(c.u), one(1.f), vcap(softcap), inv_cap(softcap != 0.f ? 1.f / softcap : 0.f);
  auto element = [&](const Vec& v) {
    if (softcap == 0.f) return vp * cpu::exp(v - vlse) - vu;
    const Vec t = (v * inv_cap).tanh();
    return (vp * cpu::exp(vcap * t - vlse) - vu) * (one - t * t);
  };
  int64_t i = 0;
  for (; i + kStep <= n; i += kStep) {
    auto [a, b] = cpu::load2(x + i);
    cpu::store2(dx + i, element(a), element(b));
  }
  for (; i < n; ++i) dx[i] = static_cast<T>(scalar(static_cast<float>(x[i]), 0.f));
  if (target >= 0) dx[target] = static_cast<T>(scalar(xt, c.t));
}

void check_labels(const int64_t* labels, int64_t rows, const Options& o) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t l = labels[r];
    TORCH_CHECK_VALUE(l == o.ignore_index || (l >= 0 && l < o.vocab_total), "labels: label ", l, " at position ", r,
                " is out of range [0, ", o.vocab_total, ") and is not ignore_index (", o.ignore_index, ")");
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> forward_backward_cpu(
    const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& lse_in,
    const std::optional<at::Tensor>& row_scale, const std::optional<at::Tensor>& dlse,
    const std::optional<at::Tensor>& grad_out, int64_t ignore_index, double label_smoothing, double z_loss,
    double softcap, int64_t vocab_start, int64_t vocab_total) {
  check_args(logits, labels, lse_in, row_scale, dlse, grad_out, at::kCPU);
  const int64_t rows = logits.size(0), n = logits.size(1);
  const Options o{ignore_index, vocab_start, vocab_total, static_cast<float>(label_smoothing),
                  static_cast<float>(z_loss), static_cast<float>(softcap)};
  const int64_t* lp = labels.const_data_ptr<int64_t>();
  check_labels(lp, rows, o);

  const bool backward = lse_in.has_value();
  at::Tensor loss = at::empty({backward ? 0 : rows}, logits.options().dtype(at::kFloat));
  at::Tensor lse = backward ? *lse_in : at::empty({rows}, logits.options().dtype(at::kFloat));
  if (rows == 0) return {loss, lse};
  TORCH_CHECK(n > 0, "logits must have at least one class");
  if (grad_out && grad_out->data_ptr() != logits.data_ptr()) {  // a separate (usually fresh) gradient buffer
    // allocated by the caller (it may also be the logits themselves): cpu_alloc.h's huge pages + prefault
    cpu::prepare_fresh(grad_out->data_ptr(), grad_out->nbytes());
  }

  EK_DISPATCH_FLOAT_TYPES(logits.scalar_type(), "cross_entropy::forward_backward_cpu", [&] {
    const scalar_t* xp = logits.const_data_ptr<scalar_t>();
    scalar_t* gp = grad_out ? static_cast<scalar_t*>(grad_out->data_ptr()) : nullptr;
    const int64_t sx = logits.stride(0), sg = grad_out ? grad_out->stride(0) : 0;
    float* loss_p = backward ? nullptr : loss.mutable_data_ptr<float>();
    float* lse_p = backward ? nullptr : lse.mutable_data_ptr<float>();
    const float* lse_in_p = backward ? lse_in->const_data_ptr<float>() : nullptr;
    const float* scale_p = row_scale ? row_scale->const_data_ptr<float>() : nullptr;
    const float* dlse_p = dlse ? dlse->const_data_ptr<float>() : nullptr;
    const bool want_sum = o.label_smoothing != 0.f;
    // Rows per task: ~32K elements of work; a large vocabulary makes every row its own task.
    const int64_t grain = std::max<int64_t>(1, 32768 / n);
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> buf(backward ? 0 : cpu::kSoftmaxBlock);
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* x = xp + r * sx;
        const Target t = classify(lp[r], n, o);
        float row_lse;
        if (backward) {
          row_lse = lse_in_p[r];
        } else {
          const cpu::RowStats st = cpu::online_stats(x, n, o.softcap, want_sum, buf.data());
          const float zt = t.in_shard ? soft_cap(static_cast<float>(x[t.local]), o.softcap) : 0.f;
          loss_p[r] = row_loss(st.lse, zt, st.sum_z, t, o);
          lse_p[r] = row_lse = st.lse;
        }
        if (gp) {
          const GradCoef c = grad_coef(scale_p[r], dlse_p ? dlse_p[r] : 0.f, row_lse, t, o);
          grad_row<scalar_t>(x, gp + r * sg, n, row_lse, c, t.in_shard ? t.local : -1, o.softcap);
        }
      }
    });
  });
  return {loss, lse};
}

}  // namespace eurokernels::cross_entropy
