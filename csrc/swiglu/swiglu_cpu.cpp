// SwiGLU / GeGLU on CPU: one streaming pass (forward: read gate and up, write y; backward: read dy, gate and up,
// write d_gate and d_up), vectorized with at::vec, tiles of rows spread over threads with at::parallel_for.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "common.h"
#include "cpu_alloc.h"
#include "cpu_exp.h"
#include "cpu_vec.h"
#include "swiglu/swiglu.h"

namespace eurokernels::swiglu {
namespace {

using cpu::kStep;
using cpu::Vec;

// Phi(g) (and, when GRAD, phi(g) = exp(-g^2 / 2) / sqrt(2 pi)) for the exact GELU. Phi = 0.5 erfc(z), z = -g / sqrt(2),
// is accurate for negative g, where 1 + erf (torch's own CPU gelu, through at::vec's 1.5e-7-absolute erf) cancels.
// Sleef's erfc (Vec::erfc) made the pass 4x slower than the memory floor; instead erfc(|z|) = t exp(-z^2 + P(t)),
// t = 1 / (1 + |z| / 2), with Numerical Recipes' Chebyshev fit P (erfcc: relative error 1.0e-7 for every z >= 0,
// checked against float64). z^2 is split exactly with an fma, z^2 = hi + lo, and exp(-lo) ~ 1 - lo keeps the tail
// accurate where z^2 is large; Phi(g) = e or 1 - e with e = erfc(|z|) / 2, by the sign of g.
inline Vec gelu_cdf(const Vec& g, Vec* pdf) {
  static constexpr float kFit[] = {0.17087277f, -0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f,
                                   -0.18628806f, 0.09678418f,  0.37409196f, 1.00002368f,  -1.26551223f};
  const Vec one(1.f), half(0.5f);
  // z capped at 16 (erfc(16) is 0 in fp32): at g = +-inf the exact z^2 split below would be inf - inf = NaN, and the
  // vector path gave NaN at +inf where the scalar tail gives +inf (found by tests/test_fuzz.py). NaN still propagates.
  const Vec z = at::vec::minimum(g.abs() * Vec(kSqrtHalf), Vec(16.f));
  const Vec t = one / at::vec::fmadd(half, z, one);
  Vec poly(kFit[0]);
  for (int k = 1; k < 10; ++k) poly = at::vec::fmadd(poly, t, Vec(kFit[k]));
  const Vec hi = z * z, lo = at::vec::fmsub(z, z, hi);  // z^2 = hi + lo exactly
  const Vec tail = one - lo;                               // exp(-lo), |lo| <= ulp(z^2) / 2
  const Vec e = half * t * cpu::exp(poly - hi) * tail;
  if (pdf) *pdf = Vec(kInvSqrt2Pi) * cpu::exp(hi.neg()) * tail;
  return Vec::blendv(one - e, e, g < Vec(0.f));
}

// Vector form of activation() in swiglu_common.h. exp is cpu::exp (1.4 ulp on AVX2; at::vec's exp_u20 has up to
// 20 ulp).
template <int ACT, bool GRAD>
inline Vec activation_vec(const Vec& g, Vec* grad) {
  const Vec one(1.f);
  if constexpr (ACT == kGelu) {
    Vec pdf;
    const Vec cdf = gelu_cdf(g, GRAD ? &pdf : nullptr);
    if constexpr (GRAD) *grad = at::vec::fmadd(g, pdf, cdf);
    return g * cdf;
  } else {
    Vec z = g, dz = one;
    if constexpr (ACT == kGeluTanh) {
      const Vec gc = at::vec::clamp(g, Vec(-kTanhClamp), Vec(kTanhClamp));
      const Vec g2 = gc * gc;
      z = gc * at::vec::fmadd(Vec(kTanhZ3), g2, Vec(kTanhZ1));
      dz = at::vec::fmadd(Vec(kTanhDZ3), g2, Vec(kTanhZ1));
    }
    const Vec e = cpu::exp(z.neg()), s = one / (one + e);
    const Vec a = g * s;
    if constexpr (GRAD) *grad = at::vec::fmadd(a * Vec::blendv(one - s, e * s, z > Vec(0.f)), dz, s);
    return a;
  }
}

template <typename T, int ACT>
void forward_span(const T* g, const T* u, T* y, int64_t n) {
  int64_t i = 0;
  for (; i + kStep <= n; i += kStep) {
    auto [g0, g1] = cpu::load2(g + i);
    auto [u0, u1] = cpu::load2(u + i);
    cpu::store2(y + i, activation_vec<ACT, false>(g0, nullptr) * u0, activation_vec<ACT, false>(g1, nullptr) * u1);
  }
  for (; i < n; ++i) y[i] = static_cast<T>(activation<ACT, false>(float(g[i]), nullptr) * float(u[i]));
}

template <typename T, int ACT>
void backward_span(const T* dy, const T* g, const T* u, T* dg, T* du, int64_t n) {
  int64_t i = 0;
  for (; i + kStep <= n; i += kStep) {
    auto [d0, d1] = cpu::load2(dy + i);
    auto [g0, g1] = cpu::load2(g + i);
    auto [u0, u1] = cpu::load2(u + i);
    Vec da0, da1;
    const Vec a0 = activation_vec<ACT, true>(g0, &da0), a1 = activation_vec<ACT, true>(g1, &da1);
    cpu::store2(dg + i, d0 * u0 * da0, d1 * u1 * da1);
    cpu::store2(du + i, d0 * a0, d1 * a1);
  }
  for (; i < n; ++i) {
    float da;
    const float d = float(dy[i]), a = activation<ACT, true>(float(g[i]), &da);
    dg[i] = static_cast<T>(d * float(u[i]) * da);
    du[i] = static_cast<T>(d * a);
  }
}

// Calls body(row, begin, end) over the columns of every row of [rows, n], in tiles of at most kTile columns
// (multiples of kStep, so only a row's last tile has a scalar tail), spread over threads in contiguous runs:
// each thread streams through its own part of memory. Long rows split so that a few rows still use every thread.
constexpr int64_t kTile = 16384;

template <typename F>
void for_each_tile(int64_t rows, int64_t n, const F& body) {
  const int64_t per_row = (n + kTile - 1) / kTile;
  const int64_t width = std::min(n, kTile);
  at::parallel_for(0, rows * per_row, std::max<int64_t>(1, kTile / width), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t row = t / per_row, c0 = (t % per_row) * kTile;
      body(row, c0, std::min(n, c0 + kTile));
    }
  });
}

}  // namespace

at::Tensor forward_cpu(const at::Tensor& gate, const at::Tensor& up, int64_t activation) {
  check_inputs(gate, up, activation, at::kCPU);
  const int64_t rows = gate.size(0), n = gate.size(1);
  at::Tensor y = cpu::empty_output({rows, n}, gate.options());
  if (rows == 0 || n == 0) return y;
  EK_DISPATCH_FLOAT_TYPES(gate.scalar_type(), "swiglu_fwd_cpu", [&] {
    const scalar_t* gp = gate.const_data_ptr<scalar_t>();
    const scalar_t* up_ = up.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const int64_t sg = gate.stride(0), su = up.stride(0);
    dispatch_activation(activation, [&](auto act) {
      for_each_tile(rows, n, [&](int64_t row, int64_t c0, int64_t c1) {
        forward_span<scalar_t, decltype(act)::value>(gp + row * sg + c0, up_ + row * su + c0, yp + row * n + c0,
                                                     c1 - c0);
      });
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& dy, const at::Tensor& gate, const at::Tensor& up,
                                                int64_t activation, bool fused) {
  check_inputs(gate, up, activation, at::kCPU);
  check_gradient(dy, gate);
  const int64_t rows = gate.size(0), n = gate.size(1);
  // fused: one [rows, 2n] gradient whose halves are d_gate and d_up (row stride 2n); else two [rows, n].
  at::Tensor dg = cpu::empty_output({rows, fused ? 2 * n : n}, gate.options());
  at::Tensor du = fused ? at::empty({0}, gate.options()) : cpu::empty_output({rows, n}, gate.options());
  if (rows == 0 || n == 0) return {dg, du};
  EK_DISPATCH_FLOAT_TYPES(gate.scalar_type(), "swiglu_bwd_cpu", [&] {
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* gp = gate.const_data_ptr<scalar_t>();
    const scalar_t* up_ = up.const_data_ptr<scalar_t>();
    scalar_t* dgp = dg.mutable_data_ptr<scalar_t>();
    scalar_t* dup = fused ? dgp + n : du.mutable_data_ptr<scalar_t>();
    const int64_t sdy = dy.stride(0), sg = gate.stride(0), su = up.stride(0), sd = fused ? 2 * n : n;
    dispatch_activation(activation, [&](auto act) {
      for_each_tile(rows, n, [&](int64_t row, int64_t c0, int64_t c1) {
        backward_span<scalar_t, decltype(act)::value>(dyp + row * sdy + c0, gp + row * sg + c0, up_ + row * su + c0,
                                                      dgp + row * sd + c0, dup + row * sd + c0, c1 - c0);
      });
    });
  });
  return {dg, du};
}

}  // namespace eurokernels::swiglu
