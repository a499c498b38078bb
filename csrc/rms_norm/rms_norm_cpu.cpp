// RMSNorm on CPU: one fused pass over memory per row (the row stays in L1/L2 between the sum of squares and the
// scaling), vectorized with at::vec, rows spread over threads with at::parallel_for.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "common.h"
#include "cpu_alloc.h"
#include "cpu_vec.h"
#include "rms_norm/rms_norm.h"
#include "rms_norm/rms_norm_common.h"

namespace eurokernels::rms_norm {
namespace {

using cpu::kStep;
using cpu::Vec;

// offset + w in fp32, rounded to the input dtype T for the casting modes that multiply in T. Computed once per
// call (hidden floats) instead of once per element.
template <typename T>
std::vector<float> effective_weight(const std::optional<at::Tensor>& weight, int64_t n, double offset, int64_t casting) {
  if (!weight) return {};
  at::Tensor w = weight->to(at::kFloat).contiguous();
  const float* wp = w.data_ptr<float>();
  std::vector<float> out(n);
  for (int64_t i = 0; i < n; ++i) {
    float v = static_cast<float>(offset) + wp[i];
    out[i] = casting == kGemma ? v : cpu::round1<T>(v);
  }
  return out;
}

template <typename T>
void forward_row(const T* x, const T* r, T* res_out, T* y, const float* w, int64_t n, float eps, int casting,
                 float* rstd_out) {
  // Pass 1: h = x (+ residual, rounded to T as the model's own add would), sum of squares in fp32.
  const T* h = r ? res_out : x;
  Vec acc0(0.f), acc1(0.f);
  float acc = 0.f;
  int64_t i = 0;
  for (; i + kStep <= n; i += kStep) {
    auto [a, b] = cpu::load2(x + i);
    if (r) {
      auto [ra, rb] = cpu::load2(r + i);
      std::tie(a, b) = cpu::round2<T>(a + ra, b + rb);
      cpu::store2(res_out + i, a, b);
    }
    acc0 = at::vec::fmadd(a, a, acc0);
    acc1 = at::vec::fmadd(b, b, acc1);
  }
  for (; i < n; ++i) {
    float v = static_cast<float>(x[i]);
    if (r) {
      v = cpu::round1<T>(v + static_cast<float>(r[i]));
      res_out[i] = static_cast<T>(v);
    }
    acc += v * v;
  }
  acc += at::vec::vec_reduce_all<float>([](Vec& p, Vec& q) { return p + q; }, acc0 + acc1);
  const float rstd = 1.f / std::sqrt(acc / static_cast<float>(n) + eps);
  *rstd_out = rstd;

  // Pass 2: scale (the row is still in cache). Vector form of scale_element() in rms_norm_common.h.
  const Vec rs(casting == kNone ? cpu::round1<T>(rstd) : rstd);
  i = 0;
  for (; i + kStep <= n; i += kStep) {
    auto [a, b] = cpu::load2(h + i);
    a = a * rs;
    b = b * rs;
    if (casting != kGemma) std::tie(a, b) = cpu::round2<T>(a, b);
    if (w) {
      a = a * Vec::loadu(w + i);
      b = b * Vec::loadu(w + i + Vec::size());
    }
    cpu::store2(y + i, a, b);
  }
  for (; i < n; ++i) {
    y[i] = static_cast<T>(scale_element(static_cast<float>(h[i]), rstd, w ? w[i] : 1.f, w != nullptr, casting,
                                        [](float v) { return cpu::round1<T>(v); }));
  }
}

// Backward for one row: dx = rstd * (g - nhat * mean(g * nhat)) with g = dy * (offset + w), nhat = h * rstd;
// dw_acc += dy * nhat. w here is offset + w in fp32 (backward ignores the forward's intermediate roundings).
template <typename T>
void backward_row(const T* dy, const T* h, const T* dres, T* dx, const float* w, float rstd, float* dw_acc,
                  int64_t n) {
  const Vec rs(rstd);
  Vec acc0(0.f), acc1(0.f);
  float acc = 0.f;
  int64_t i = 0;
  for (; i + kStep <= n; i += kStep) {
    auto [ga, gb] = cpu::load2(dy + i);
    auto [ha, hb] = cpu::load2(h + i);
    if (w) {
      ga = ga * Vec::loadu(w + i);
      gb = gb * Vec::loadu(w + i + Vec::size());
    }
    acc0 = at::vec::fmadd(ga, ha, acc0);
    acc1 = at::vec::fmadd(gb, hb, acc1);
  }
  for (; i < n; ++i) acc += static_cast<float>(dy[i]) * (w ? w[i] : 1.f) * static_cast<float>(h[i]);
  acc += at::vec::vec_reduce_all<float>([](Vec& p, Vec& q) { return p + q; }, acc0 + acc1);
  // mean(g * nhat) = rstd * sum(g * h) / n
  const float c = acc * rstd / static_cast<float>(n);
  const Vec cv(c);
  i = 0;
  for (; i + kStep <= n; i += kStep) {
    auto [da, db] = cpu::load2(dy + i);
    auto [ha, hb] = cpu::load2(h + i);
    Vec na = ha * rs, nb = hb * rs;
    Vec ga = da, gb = db;
    if (w) {
      ga = ga * Vec::loadu(w + i);
      gb = gb * Vec::loadu(w + i + Vec::size());
    }
    Vec xa = rs * (ga - na * cv), xb = rs * (gb - nb * cv);
    if (dres) {
      auto [ra, rb] = cpu::load2(dres + i);
      xa = xa + ra;
      xb = xb + rb;
    }
    cpu::store2(dx + i, xa, xb);
    if (dw_acc) {
      at::vec::fmadd(da, na, Vec::loadu(dw_acc + i)).store(dw_acc + i);
      at::vec::fmadd(db, nb, Vec::loadu(dw_acc + i + Vec::size())).store(dw_acc + i + Vec::size());
    }
  }
  for (; i < n; ++i) {
    float d = static_cast<float>(dy[i]), nh = static_cast<float>(h[i]) * rstd;
    float v = rstd * (d * (w ? w[i] : 1.f) - nh * c) + (dres ? static_cast<float>(dres[i]) : 0.f);
    dx[i] = static_cast<T>(v);
    if (dw_acc) dw_acc[i] += d * nh;
  }
}

// Rows per parallel task: enough work (~32K elements) to amortize the scheduling.
int64_t row_grain(int64_t n) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1)); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                           const std::optional<at::Tensor>& residual, double eps,
                                                           double offset, int64_t casting) {
  CHECK_DEVICE(x, at::kCPU);
  CHECK_DIM(x, 2);
  const int64_t rows = x.size(0), n = x.size(1);
  check_rows(x, "x", rows, n);
  if (residual) {
    check_rows(*residual, "residual", rows, n);
    CHECK_DTYPE(*residual, x.scalar_type());
  }
  if (weight) TORCH_CHECK(weight->dim() == 1 && weight->size(0) == n, "weight must be [", n, "]");
  TORCH_CHECK(casting >= kLlama && casting <= kNone, "unknown casting mode ", casting);

  at::Tensor y = cpu::empty_output({rows, n}, x.options());
  at::Tensor res_out = residual ? cpu::empty_output({rows, n}, x.options()) : at::empty({0}, x.options());
  at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  if (rows == 0 || n == 0) return {y, res_out, rstd.fill_(1.f / std::sqrt(static_cast<float>(eps)))};

  EK_DISPATCH_FLOAT_TYPES(x.scalar_type(), "rms_norm_fwd_cpu", [&] {
    const std::vector<float> w = effective_weight<scalar_t>(weight, n, offset, casting);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* rp = residual ? residual->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    scalar_t* op = residual ? res_out.mutable_data_ptr<scalar_t>() : nullptr;
    float* sp = rstd.mutable_data_ptr<float>();
    const int64_t sx = x.stride(0), sr = residual ? residual->stride(0) : 0;
    at::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        forward_row<scalar_t>(xp + row * sx, rp ? rp + row * sr : nullptr, op ? op + row * n : nullptr,
                              yp + row * n, w.empty() ? nullptr : w.data(), n, static_cast<float>(eps),
                              static_cast<int>(casting), sp + row);
      }
    });
  });
  return {y, res_out, rstd};
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& dy, const at::Tensor& h,
                                                const std::optional<at::Tensor>& weight, const at::Tensor& rstd,
                                                const std::optional<at::Tensor>& dresidual_out, double offset) {
  CHECK_DEVICE(h, at::kCPU);
  CHECK_DIM(h, 2);
  const int64_t rows = h.size(0), n = h.size(1);
  check_rows(h, "h", rows, n);
  check_rows(dy, "dy", rows, n);
  CHECK_DTYPE(dy, h.scalar_type());
  if (dresidual_out) {
    check_rows(*dresidual_out, "dresidual_out", rows, n);
    CHECK_DTYPE(*dresidual_out, h.scalar_type());
  }
  CHECK_DTYPE(rstd, at::kFloat);
  CHECK_CONTIGUOUS(rstd);
  TORCH_CHECK(rstd.numel() == rows, "rstd must have ", rows, " elements");
  if (weight) TORCH_CHECK(weight->dim() == 1 && weight->size(0) == n, "weight must be [", n, "]");

  at::Tensor dx = cpu::empty_output({rows, n}, h.options());
  // dw: fp32 partial sums over a fixed number of row chunks (independent of the thread count, so the result is
  // bitwise deterministic for a given shape), then summed in chunk order.
  const int64_t chunks = weight ? std::min<int64_t>(std::max<int64_t>(rows, 1), 32) : 0;
  at::Tensor partial = at::zeros({chunks, n}, h.options().dtype(at::kFloat));
  at::Tensor dw = weight ? at::empty({n}, h.options().dtype(at::kFloat)) : at::empty({0}, h.options());
  if (n == 0) return {dx, weight ? dw.to(weight->scalar_type()) : dw};

  EK_DISPATCH_FLOAT_TYPES(h.scalar_type(), "rms_norm_bwd_cpu", [&] {
    std::vector<float> w;
    if (weight) {
      w = effective_weight<float>(weight, n, offset, kGemma);  // fp32, unrounded
    }
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* hp = h.const_data_ptr<scalar_t>();
    const scalar_t* drp = dresidual_out ? dresidual_out->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    const float* sp = rstd.const_data_ptr<float>();
    const int64_t sdy = dy.stride(0), sh = h.stride(0), sdr = dresidual_out ? dresidual_out->stride(0) : 0;
    auto rows_of = [&](int64_t row0, int64_t row1, float* dw_acc) {
      for (int64_t row = row0; row < row1; ++row) {
        backward_row<scalar_t>(dyp + row * sdy, hp + row * sh, drp ? drp + row * sdr : nullptr, dxp + row * n,
                               w.empty() ? nullptr : w.data(), sp[row], dw_acc, n);
      }
    };
    if (!weight) {
      at::parallel_for(0, rows, row_grain(n), [&](int64_t b, int64_t e) { rows_of(b, e, nullptr); });
      return;
    }
    float* pp = partial.mutable_data_ptr<float>();
    const int64_t per_chunk = (rows + chunks - 1) / chunks;
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        rows_of(std::min(rows, c * per_chunk), std::min(rows, (c + 1) * per_chunk), pp + c * n);
      }
    });
    float* dwp = dw.mutable_data_ptr<float>();
    at::parallel_for(0, n, 4096, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        float s = 0.f;
        for (int64_t c = 0; c < chunks; ++c) s += pp[c * n + j];
        dwp[j] = s;
      }
    });
  });
  return {dx, weight ? dw.to(weight->scalar_type()) : dw};
}

}  // namespace eurokernels::rms_norm
