// The softmax-family row loops with the AVX-512 exp of cpu_avx512.h (no soft cap: the capped path keeps at::vec).
// Called by online_softmax_cpu.h (log-sum-exp), cross_entropy_cpu.cpp (gradient rows) and softmax_cpu.cpp when
// avx512::enabled(); same math and the same special values as the at::vec loops they replace.
#pragma once
#include "cpu_avx512.h"

#if EK_HAVE_AVX512
#include <algorithm>
#include <cmath>
#include <limits>

namespace eurokernels::cpu::avx512 {

struct LseSum {
  float lse;    // log(sum(exp(x)))
  float sum_z;  // sum(x) (kSum only)
};

// Log-sum-exp of a row (and its sum) in one sweep over memory: per block of kBlock elements (8 KB of bf16, in L1
// after the first pass), the block's max from memory, then the exps from L1, the running sum rescaled once per
// block. No scratch buffer: re-reading the block from L1 costs less than storing and reloading fp32 copies.
template <typename T, bool kSum>
EK_AVX512 LseSum row_lse(const T* x, int64_t n) {
  constexpr int64_t kBlock = 4096;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float m = kNegInf, s = 0.f, sum_z = 0.f;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t len = std::min(kBlock, n - b0);
    const T* xb = x + b0;
    __m512 m0 = _mm512_set1_ps(kNegInf), m1 = m0, z0 = _mm512_setzero_ps(), z1 = z0, a, b;
    int64_t i = 0;
    for (; i + 32 <= len; i += 32) {
      load32_unordered(xb + i, a, b);
      m0 = _mm512_max_ps(m0, a);
      m1 = _mm512_max_ps(m1, b);
      if constexpr (kSum) {
        z0 = _mm512_add_ps(z0, a);
        z1 = _mm512_add_ps(z1, b);
      }
    }
    float bm = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
    float bs = kSum ? _mm512_reduce_add_ps(_mm512_add_ps(z0, z1)) : 0.f;
    for (int64_t j = i; j < len; ++j) {
      const float v = static_cast<float>(xb[j]);
      bm = std::max(bm, v);
      bs += v;
    }
    sum_z += bs;
    const float mn = std::max(m, bm);
    if (mn == kNegInf) {
      // Nothing but -inf so far, unless vmaxps dropped a NaN (it returns its second operand on NaN). With a finite
      // max a NaN reaches the sum below through its exp; here it must be looked for.
      for (int64_t j = 0; j < len; ++j) {
        if (std::isnan(static_cast<float>(xb[j]))) return {std::numeric_limits<float>::quiet_NaN(), sum_z};
      }
      continue;
    }
    s *= std::exp(m - mn);
    m = mn;
    const Shift sh = make_shift(mn);
    __m512 s0 = _mm512_setzero_ps(), s1 = s0;
    for (i = 0; i + 32 <= len; i += 32) {
      load32_unordered(xb + i, a, b);
      s0 = _mm512_add_ps(s0, exp_shifted(a, sh));
      s1 = _mm512_add_ps(s1, exp_shifted(b, sh));
    }
    float e = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) * sh.scale;
    for (int64_t j = i; j < len; ++j) e += std::exp(static_cast<float>(xb[j]) - mn);
    s += e;
  }
  return {m + std::log(s), sum_z};
}

// y_i = p * exp(x_i - shift) - u, rounded once to T. y may be x itself (each vector is read before it is written).
// Softmax output (p = 1, u = 0) and the cross-entropy gradient (before its true-class term).
template <typename T>
EK_AVX512 void exp_affine_row(const T* x, T* y, int64_t n, float shift, float p, float u) {
  const Shift sh = make_shift(shift);
  const __m512 vp = _mm512_set1_ps(p * sh.scale), vu = _mm512_set1_ps(u);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 a = load16(x + i), b = load16(x + i + 16);
    store16(y + i, _mm512_fmsub_ps(vp, exp_shifted(a, sh), vu));
    store16(y + i + 16, _mm512_fmsub_ps(vp, exp_shifted(b, sh), vu));
  }
  for (; i + 16 <= n; i += 16) store16(y + i, _mm512_fmsub_ps(vp, exp_shifted(load16(x + i), sh), vu));
  for (; i < n; ++i) y[i] = static_cast<T>(p * std::exp(static_cast<float>(x[i]) - shift) - u);
}

// Softmax / log-softmax backward of one row from the input x and its lse (p = exp(x - lse)):
//   softmax:      c = sum(dy * p), dx = p * (dy - c)
//   log-softmax:  c = sum(dy),     dx = dy - p * c
template <typename T, bool kLog>
EK_AVX512 void softmax_backward_row(const T* dy, const T* x, T* dx, int64_t n, float lse) {
  // e = exp_shifted(x) = p / f with f = sh.scale: the row factor f goes into the constants.
  const Shift sh = make_shift(lse);
  const float f = sh.scale;
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 d = load16(dy + i);
    acc = kLog ? _mm512_add_ps(acc, d) : _mm512_fmadd_ps(d, exp_shifted(load16(x + i), sh), acc);
  }
  float c = _mm512_reduce_add_ps(acc) * (kLog ? 1.f : f);
  for (int64_t j = i; j < n; ++j) {
    c += static_cast<float>(dy[j]) * (kLog ? 1.f : std::exp(static_cast<float>(x[j]) - lse));
  }
  const __m512 vcf = _mm512_set1_ps(c * f), vf = _mm512_set1_ps(f);
  for (i = 0; i + 16 <= n; i += 16) {
    const __m512 d = load16(dy + i), e = exp_shifted(load16(x + i), sh);
    // log-softmax: dy - e * (c f);  softmax: e * (dy f - c f)
    store16(dx + i, kLog ? _mm512_fnmadd_ps(e, vcf, d) : _mm512_mul_ps(e, _mm512_fmsub_ps(d, vf, vcf)));
  }
  for (; i < n; ++i) {
    const float dv = static_cast<float>(dy[i]), pv = std::exp(static_cast<float>(x[i]) - lse);
    dx[i] = static_cast<T>(kLog ? dv - pv * c : pv * (dv - c));
  }
}

}  // namespace eurokernels::cpu::avx512
#endif
