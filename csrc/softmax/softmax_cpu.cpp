// Softmax / log-softmax on CPU for any row length: the log-sum-exp in one sweep over memory (the blockwise online
// softmax shared with cross-entropy), then the output in a second sweep over the row while it is in L2.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common.h"
#include "cpu_alloc.h"
#include "cpu_exp.h"
#include "cpu_vec.h"
#include "online_softmax_cpu.h"
#include "softmax/softmax.h"

namespace eurokernels::softmax {
namespace {

using cpu::kStep;
using cpu::Vec;

int64_t row_grain(int64_t n) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1)); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& x, bool log) {
  CHECK_DEVICE(x, at::kCPU);
  CHECK_DIM(x, 2);
  const int64_t rows = x.size(0), n = x.size(1);
  check_rows(x, "x", rows, n);
  at::Tensor y = cpu::empty_output({rows, n}, x.options());
  at::Tensor lse_t = at::empty({rows}, x.options().dtype(at::kFloat));
  if (rows == 0) return {y, lse_t};
  if (n == 0) return {y, lse_t.fill_(-std::numeric_limits<float>::infinity())};  // as torch.logsumexp
  EK_DISPATCH_FLOAT_TYPES(x.scalar_type(), "softmax_fwd_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    float* lp = lse_t.mutable_data_ptr<float>();
    const int64_t sx = x.stride(0);
    at::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
      std::vector<float> buf(cpu::kSoftmaxBlock);
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = xp + r * sx;
        scalar_t* yr = yp + r * n;
        const float lse = cpu::online_stats(xr, n, 0.f, false, buf.data()).lse;
        lp[r] = lse;
        if (!log && std::isnan(lse)) {  // a NaN input: a NaN row, as PyTorch (the exp would give NaN on its own)
          cpu::fill_row(yr, n, lse);
          continue;
        }
#if EK_HAVE_AVX512
        if (!log && cpu::avx512::enabled()) {
          cpu::avx512::exp_affine_row(xr, yr, n, lse, 1.f, 0.f);
          continue;
        }
#endif
        const Vec vl(lse);
        int64_t i = 0;
        for (; i + kStep <= n; i += kStep) {
          auto [a, b] = cpu::load2(xr + i);
          if (log) {
            cpu::store2(yr + i, a - vl, b - vl);
          } else {
            cpu::store2(yr + i, cpu::exp(a - vl), cpu::exp(b - vl));
          }
        }
        for (; i < n; ++i) {
          const float v = static_cast<float>(xr[i]) - lse;
          yr[i] = static_cast<scalar_t>(log ? v : std::exp(v));
        }
      }
    });
  });
  return {y, lse_t};
}

at::Tensor backward_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& lse, bool log) {
  CHECK_DEVICE(x, at::kCPU);
  CHECK_DIM(x, 2);
  check_backward_args(dy, x, lse);
  const int64_t rows = x.size(0), n = x.size(1);
  at::Tensor dx = cpu::empty_output({rows, n}, x.options());
  if (rows == 0 || n == 0) return dx;
  EK_DISPATCH_FLOAT_TYPES(x.scalar_type(), "softmax_bwd_cpu", [&] {
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const float* lp = lse.const_data_ptr<float>();
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    const int64_t sdy = dy.stride(0), sx = x.stride(0);
    at::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* d = dyp + r * sdy;
        const scalar_t* xr = xp + r * sx;
        scalar_t* out = dxp + r * n;
        const float lse_r = lp[r];
        if (std::isnan(lse_r)) {
          cpu::fill_row(out, n, lse_r);
          continue;
        }
#if EK_HAVE_AVX512
        if (cpu::avx512::enabled()) {
          if (log) {
            cpu::avx512::softmax_backward_row<scalar_t, true>(d, xr, out, n, lse_r);
          } else {
            cpu::avx512::softmax_backward_row<scalar_t, false>(d, xr, out, n, lse_r);
          }
          continue;
        }
#endif
        const Vec vl(lse_r);
        // p = exp(x - lse). softmax: c = sum(dy * p), dx = p * (dy - c);  log_softmax: c = sum(dy), dx = dy - p * c
        Vec acc(0.f);
        int64_t i = 0;
        for (; i + kStep <= n; i += kStep) {
          auto [da, db] = cpu::load2(d + i);
          if (log) {
            acc = acc + da + db;
          } else {
            auto [xa, xb] = cpu::load2(xr + i);
            acc = at::vec::fmadd(da, cpu::exp(xa - vl), at::vec::fmadd(db, cpu::exp(xb - vl), acc));
          }
        }
        float c = cpu::reduce_sum(acc);
        for (; i < n; ++i) {
          c += static_cast<float>(d[i]) * (log ? 1.f : std::exp(static_cast<float>(xr[i]) - lse_r));
        }
        const Vec vc(c);
        i = 0;
        for (; i + kStep <= n; i += kStep) {
          auto [da, db] = cpu::load2(d + i);
          auto [xa, xb] = cpu::load2(xr + i);
          const Vec pa = cpu::exp(xa - vl), pb = cpu::exp(xb - vl);
          if (log) {
            cpu::store2(out + i, da - pa * vc, db - pb * vc);
          } else {
            cpu::store2(out + i, pa * (da - vc), pb * (db - vc));
          }
        }
        for (; i < n; ++i) {
          const float dv = static_cast<float>(d[i]), pv = std::exp(static_cast<float>(xr[i]) - lse_r);
          out[i] = static_cast<scalar_t>(log ? dv - pv * c : pv * (dv - c));
        }
      }
    });
  });
  return dx;
}

}  // namespace eurokernels::softmax
