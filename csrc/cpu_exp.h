// exp for the CPU kernels' at::vec code (the AVX2 path: softmax, cross-entropy, attention), accurate to ~1 ulp.
//
// Why not at::vec's exp_u20: it is a fast exp with up to ~20 ulp of error (a per-element relative error of 2.7e-6
// measured on softmax outputs), while PyTorch's own softmax uses Sleef's 1-ulp exp and our AVX-512 path
// (cpu_avx512.h) a 7.6e-8 polynomial. With exp_u20 the AVX2 machines computed a less accurate loss than both, which
// a chaotic training curve then amplified (tests/test_integration_transformers.py). Why not Sleef's exp (Vec::exp):
// it is exact to 1 ulp but costs more instructions than this one, which is as accurate here (tests/test_cpu_isa.py:
// test_exp_accuracy measures both against float64 over exp's whole range).
//
// The method (classic Cody-Waite reduction, Cephes' minimax polynomial for expf):
//   n = round(x * log2(e))                 so that r = x - n * ln2 lies in [-ln2/2, ln2/2]
//   r = x - n * ln2_hi - n * ln2_lo        two FMAs; ln2_hi has few bits, so n * ln2_hi is exact for |n| <= 150
//   e^r = 1 + r + r^2 * P(r)               degree 5 P: relative error ~1e-7 on that interval
//   e^x = e^r * 2^n                        n added to e^r's exponent field (e^r in [0.7, 1.42])
// Special values without branches: the input is clamped to [ln(FLT_MIN), 127.5 ln 2] so that the exponent add
// stays in the normal range; below ln(FLT_MIN) = -87.34 the result is 0 (results under 1.2e-38 are flushed, where
// a scalar expf would return a subnormal: an absolute error below 1.2e-38), above 127.5 ln 2 = 88.38 it is inf
// (a scalar expf overflows at 88.72; the kernels only take exps of values <= 0). NaN stays NaN, -inf gives 0.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include "cpu_vec.h"

#if defined(CPU_CAPABILITY_AVX2) && !defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace eurokernels::cpu {

#if defined(CPU_CAPABILITY_AVX2) && !defined(CPU_CAPABILITY_AVX512)
inline Vec exp(const Vec& v) {
  const __m256 x0 = v;
  const __m256 lo = _mm256_set1_ps(-87.3365447504f), hi = _mm256_set1_ps(88.3762626647949f);
  // _mm256_max_ps / _mm256_min_ps return their second operand when either is NaN: x0 last keeps a NaN.
  const __m256 x = _mm256_min_ps(hi, _mm256_max_ps(lo, x0));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);    // ln2_hi = 355 / 512
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);       // ln2_lo = ln2 - ln2_hi
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.f));
  // y * 2^n: n in [-126, 128] and y's exponent field 126 or 127 keep the sum in [1, 254] (n = 128 only with y < 1).
  // (NaN: cvtps gives 0x80000000, which the shift turns into 0: y's NaN bits pass the add unchanged.)
  const __m256i shifted = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
  __m256 res = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(y), shifted));
  res = _mm256_and_ps(res, _mm256_cmp_ps(x0, lo, _CMP_NLT_UQ));                          // below: 0 (NaN kept)
  res = _mm256_blendv_ps(res, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x0, hi, _CMP_GT_OQ));  // above: inf
  return Vec(res);
}
#else
// Other builds (AVX-512 at::vec, NEON, scalar): at::vec's Sleef-based exp, 1 ulp.
inline Vec exp(const Vec& v) { return v.exp(); }
#endif

}  // namespace eurokernels::cpu
