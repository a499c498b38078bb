// The softmax-family row loops with the AVX-512 exp of cpu_avx512.h, with or without the cross-entropy's soft cap
// (z = softcap * tanh(x / softcap), Gemma-2/3's final logits). Called by online_softmax_cpu.h (log-sum-exp),
// cross_entropy_cpu.cpp (gradient rows) and softmax_cpu.cpp when avx512::enabled(); same math and the same special
// values as the at::vec loops they replace.
#pragma once
#include "cpu_avx512.h"
#include "cross_entropy/cross_entropy_common.h"

#if EK_HAVE_AVX512
#include <algorithm>
#include <cmath>
#include <limits>

namespace eurokernels::cpu::avx512 {

struct LseSum {
  float lse;    // log(sum(exp(x)))
  float sum_z;  // sum(x) (kSum only)
};

// tanh(x / softcap) for 16 lanes, given kk = 2 log2(e) / softcap: (e - 1) / (e + 1) with e = exp(2 x / softcap),
// the exponent clamped to +-40 (tanh is +-1 in fp32 well before) so e + 1 stays finite for the reciprocal
// (vrcp14ps and one Newton step: relative error ~1e-8). NaN propagates (vmaxps / vminps return their second
// operand, x, when it is NaN). Near 0 the subtraction e - 1 leaves an absolute error of ~1e-7 in tanh, i.e. ~3e-6
// in the capped logit at softcap 30: below fp32's own spacing of logits of size 20 and more.
EK_AVX512_INLINE __m512 tanh_k(__m512 x, __m512 kk) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 t = _mm512_min_ps(_mm512_set1_ps(40.f), _mm512_max_ps(_mm512_set1_ps(-40.f), _mm512_mul_ps(x, kk)));
  const __m512 e = exp2(t), d = _mm512_add_ps(e, one);
  __m512 r = _mm512_rcp14_ps(d);
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.f)));
  return _mm512_mul_ps(_mm512_sub_ps(e, one), r);
}

// Log-sum-exp of a row (and its sum) in one sweep over memory: per block of kBlock elements (8 KB of bf16, in L1
// after the first pass), the block's max from memory, then the exps from L1, the running sum rescaled once per
// block. No scratch buffer: re-reading the block from L1 costs less than storing and reloading fp32 copies.
// With a soft cap (kCap) the max is taken on the raw values and capped once (the cap is monotonic), so each element
// pays one tanh, in the second pass, and the sum is of the capped values.
template <typename T, bool kSum, bool kCap>
EK_AVX512 LseSum row_lse(const T* x, int64_t n, float softcap) {
  constexpr int64_t kBlock = 4096;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const __m512 kk = _mm512_set1_ps(kCap ? 2.f * kLog2e / softcap : 0.f), vcap = _mm512_set1_ps(softcap);
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
      if constexpr (kSum && !kCap) {
        z0 = _mm512_add_ps(z0, a);
        z1 = _mm512_add_ps(z1, b);
      }
    }
    float bm = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
    float bs = kSum && !kCap ? _mm512_reduce_add_ps(_mm512_add_ps(z0, z1)) : 0.f;
    for (int64_t j = i; j < len; ++j) {
      const float v = static_cast<float>(xb[j]);
      bm = std::max(bm, v);
      if (!kCap) bs += v;
    }
    if (kCap) bm = cross_entropy::soft_cap(bm, softcap);  // -inf -> -softcap: a capped row is never all -inf
    const float mn = std::max(m, bm);
    if (mn == kNegInf) {
      // Nothing but -inf so far, unless vmaxps dropped a NaN (it returns its second operand on NaN). With a finite
      // max a NaN reaches the sum below through its exp; here it must be looked for.
      for (int64_t j = 0; j < len; ++j) {
        if (std::isnan(static_cast<float>(xb[j]))) return {std::numeric_limits<float>::quiet_NaN(), sum_z};
      }
      sum_z += bs;
      continue;
    }
    s *= std::exp(m - mn);
    m = mn;
    const Shift sh = make_shift(mn);
    __m512 s0 = _mm512_setzero_ps(), s1 = s0;
    z0 = z1 = _mm512_setzero_ps();
    for (i = 0; i + 32 <= len; i += 32) {
      load32_unordered(xb + i, a, b);
      if constexpr (kCap) {
        a = _mm512_mul_ps(vcap, tanh_k(a, kk));
        b = _mm512_mul_ps(vcap, tanh_k(b, kk));
        if constexpr (kSum) {
          z0 = _mm512_add_ps(z0, a);
          z1 = _mm512_add_ps(z1, b);
        }
      }
      s0 = _mm512_add_ps(s0, exp_shifted(a, sh));
      s1 = _mm512_add_ps(s1, exp_shifted(b, sh));
    }
    float e = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) * sh.scale;
    if (kCap && kSum) bs = _mm512_reduce_add_ps(_mm512_add_ps(z0, z1));
    for (int64_t j = i; j < len; ++j) {
      const float z = cross_entropy::soft_cap(static_cast<float>(xb[j]), kCap ? softcap : 0.f);
      e += std::exp(z - mn);
      if (kCap) bs += z;
    }
    s += e;
    sum_z += bs;
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

// The cross-entropy gradient under a soft cap, before its true-class term: with t = tanh(x_i / softcap) and
// z = softcap * t, dx_i = (p * exp(z - shift) - u) * (1 - t^2), rounded once to T. dx may be x itself.
template <typename T>
EK_AVX512 void capped_grad_row(const T* x, T* dx, int64_t n, float shift, float p, float u, float softcap) {
  const Shift sh = make_shift(shift);
  const __m512 vp = _mm512_set1_ps(p * sh.scale), vu = _mm512_set1_ps(u), vcap = _mm512_set1_ps(softcap);
  const __m512 kk = _mm512_set1_ps(2.f * kLog2e / softcap);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 t = tanh_k(load16(x + i), kk);
    const __m512 g = _mm512_fmsub_ps(vp, exp_shifted(_mm512_mul_ps(vcap, t), sh), vu);
    store16(dx + i, _mm512_fnmadd_ps(_mm512_mul_ps(g, t), t, g));  // g - g t^2
  }
  for (; i < n; ++i) {
    const float t = std::tanh(static_cast<float>(x[i]) / softcap);
    dx[i] = static_cast<T>((p * std::exp(softcap * t - shift) - u) * (1.f - t * t));
  }
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
