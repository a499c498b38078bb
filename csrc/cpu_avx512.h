// AVX-512 building blocks for the exp-bound CPU kernels (log-sum-exp, softmax and cross-entropy gradients), chosen
// at run time.
//
// Why a second path: the package is compiled for AVX2 (every x86 node of Europe's HPC centres has it, and at::vec
// picks its implementation at compile time), but the large-vocabulary loss is bound by one exp per logit, and on an
// AVX-512 CPU (AMD Zen 4/5, Intel Ice Lake / Sapphire Rapids Xeons) an exp built from AVX-512 instructions takes
// about a quarter of the instructions per element of the AVX2 exp (16 lanes, no clamps; the speed-up is measured in
// the README's CPU section). The exp:
//   exp(z - m) = 2^t,  t = z * log2(e) - m * log2(e)     one FMA (see make_shift for the rounding of m * log2(e))
//   n = round(t), f = t - n in [-1/2, 1/2]                vrndscaleps, vreduceps (no separate subtraction)
//   2^f = degree-5 minimax polynomial                     5 FMAs, max relative error 7.6e-8 (fp32 exp quality)
//   2^t = 2^f * 2^n                                       vscalefps (handles underflow to 0 and -inf -> 0: no clamp)
// NaN propagates (vreduceps and vscalefps return NaN), -inf logits give exp 0 (vreduceps(-inf) = 0, vscalefps(.,
// -inf) = 0), as the reference does.
//
// The functions carry a target attribute instead of file-wide -mavx512 flags, so the rest of the file (and any
// inline function the linker might merge with another file's copy) stays AVX2; they are only called after
// enabled() said yes. enabled() follows ATen's own capability (so ATEN_CPU_CAPABILITY=avx2 turns both off) and can
// be forced off from Python (eurokernels._C.set_cpu_avx512) so one machine tests both paths.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EK_HAVE_AVX512 1
#include <immintrin.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include <ATen/Version.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#define EK_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma,f16c")))
#define EK_AVX512_INLINE EK_AVX512 inline __attribute__((always_inline))

namespace eurokernels::cpu::avx512 {

// -1: not decided yet; 0 / 1: the answer. The override is process-wide (tests flip it between runs of an op).
inline std::atomic<int>& state() {
  static std::atomic<int> s{-1};
  return s;
}

inline bool supported() {
  // ATen's answer ("AVX512", "AVX2", "DEFAULT"; ATEN_CPU_CAPABILITY lowers it), and the CPU's own.
  static const bool ok = at::get_cpu_capability().find("AVX512") != std::string::npos &&
                         __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return ok;
}

inline bool enabled() {
  int s = state().load(std::memory_order_relaxed);
  if (s < 0) {
    s = supported() ? 1 : 0;
    state().store(s, std::memory_order_relaxed);
  }
  return s == 1;
}

// Returns whether the AVX-512 path is now on (asking for it on a CPU without AVX-512 leaves it off).
inline bool set_enabled(bool on) {
  state().store(on && supported() ? 1 : 0, std::memory_order_relaxed);
  return enabled();
}

constexpr float kLog2e = 1.4426950408889634f;

// 2^t for a vector of t (any value: -inf -> 0, NaN -> NaN, below -150 -> 0).
EK_AVX512_INLINE __m512 exp2(__m512 t) {
  constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m512 n = _mm512_roundscale_ps(t, kNearest);
  const __m512 f = _mm512_reduce_ps(t, kNearest);  // t - n, exact
  // Minimax on [-1/2, 1/2] for 2^f, relative error 7.6e-8 (fitted in float64, checked in tests/test_cpu_isa.py).
  __m512 p = _mm512_set1_ps(1.3276738e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6756340e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5507132e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022118e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314697e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000001f));
  return _mm512_scalef_ps(p, n);
}

// exp(v - shift) = 2^(v * L + hi) * 2^lo with L = log2(e) in fp32 and hi + lo = -shift * L (in double): one FMA
// per element, and the rounding of -shift * L (up to |shift| * 3e-8, i.e. 3e-4 at logits near 1e4) goes into the
// row constant 2^lo instead of into every exponent. The callers fold `scale` = 2^lo into a per-row factor.
// Past |shift| = 2^24 (logits of 1.7e7 and more) the split fails: fp32 hi is off by up to half its ulp, so 2^lo
// overflows (from |shift| ~ 1e9: NaN rows, found by tests/test_fuzz.py), and v * (L - log2(e)) is no longer small;
// such rows take exp2((v - shift) * L) instead, one more instruction per vector (`direct`).
struct Shift {
  __m512 hi;
  float scale;
  bool direct;
  __m512 shift;
};
constexpr float kMaxSplitShift = 16777216.f;  // 2^24
EK_AVX512_INLINE Shift make_shift(float shift) {
  const double t = -static_cast<double>(shift) * static_cast<double>(kLog2e);
  const float hi = static_cast<float>(t);
  const bool finite = std::isfinite(t);  // +-inf / NaN shift: no split (the exps are 0, inf or NaN anyway)
  const bool direct = finite && std::fabs(shift) > kMaxSplitShift;
  const float scale = finite && !direct ? static_cast<float>(std::exp2(t - static_cast<double>(hi))) : 1.f;
  return {_mm512_set1_ps(hi), scale, direct, _mm512_set1_ps(shift)};
}
// exp(v - shift) / scale.
EK_AVX512_INLINE __m512 exp_shifted(__m512 v, const Shift& s) {
  if (s.direct) return exp2(_mm512_mul_ps(_mm512_sub_ps(v, s.shift), _mm512_set1_ps(kLog2e)));
  return exp2(_mm512_fmadd_ps(v, _mm512_set1_ps(kLog2e), s.hi));
}

// 16 consecutive elements as fp32, in order.
EK_AVX512_INLINE __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
EK_AVX512_INLINE __m512 load16(const c10::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
EK_AVX512_INLINE __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// 32 consecutive elements as two fp32 vectors, in an order that only reductions may rely on (bf16: even and odd
// elements, one load and two integer ops for 32 values).
EK_AVX512_INLINE void load32_unordered(const float* p, __m512& a, __m512& b) {
  a = _mm512_loadu_ps(p);
  b = _mm512_loadu_ps(p + 16);
}
EK_AVX512_INLINE void load32_unordered(const c10::BFloat16* p, __m512& a, __m512& b) {
  const __m512i v = _mm512_loadu_si512(p);
  a = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  b = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}
EK_AVX512_INLINE void load32_unordered(const c10::Half* p, __m512& a, __m512& b) {
  a = load16(p);
  b = load16(p + 16);
}

// Store 16 fp32 values rounded to the element type: round to nearest even, NaN -> quiet NaN, as c10's conversions.
EK_AVX512_INLINE void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
EK_AVX512_INLINE void store16(c10::BFloat16* p, __m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}
EK_AVX512_INLINE void store16(c10::Half* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

}  // namespace eurokernels::cpu::avx512

#else
#define EK_HAVE_AVX512 0
#endif
