// Row statistics for softmax-like ops on CPU: the log-sum-exp of a (softcapped) row in one sweep over memory.
// Shared by cross_entropy_cpu.cpp and softmax/softmax_cpu.cpp.
//
// The row is processed in blocks of kBlock elements: each block is loaded once from memory (converted to fp32 and
// soft-capped into a small scratch buffer that stays in L1), its maximum taken, the running sum rescaled once per
// block (one scalar exp), and the block's exps summed from L1. So one vector exp per element, against two for the
// per-element online update (m' = max(m, z); s = s * exp(m - m') + exp(z - m')). On an AVX-512 CPU,
// online_softmax_avx512.h does the same with a fraction of the instructions per element.
#pragma once
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu_exp.h"
#include "cpu_vec.h"
#include "cross_entropy/cross_entropy_common.h"
#include "online_softmax_avx512.h"

namespace eurokernels::cpu {

constexpr int64_t kSoftmaxBlock = 2048;  // fp32 scratch of 8 KB

inline float reduce_max(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, v);
}
inline float reduce_sum(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, v);
}

// softcap * tanh(v / softcap), or v when softcap == 0.
inline Vec cap(const Vec& v, float softcap) {
  return softcap == 0.f ? v : Vec(softcap) * (v * Vec(1.f / softcap)).tanh();
}

struct RowStats {
  float lse;    // log(sum(exp(z)))
  float sum_z;  // sum(z) (only when asked for)
};

// buf: kSoftmaxBlock floats of thread-private scratch.
template <typename T>
RowStats online_stats(const T* x, int64_t n, float softcap, bool want_sum, float* buf) {
#if EK_HAVE_AVX512
  if (avx512::enabled()) {
    avx512::LseSum r;
    if (softcap == 0.f) {
      r = want_sum ? avx512::row_lse<T, true, false>(x, n, 0.f) : avx512::row_lse<T, false, false>(x, n, 0.f);
    } else {
      r = want_sum ? avx512::row_lse<T, true, true>(x, n, softcap) : avx512::row_lse<T, false, true>(x, n, softcap);
    }
    return {r.lse, r.sum_z};
  }
#endif
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float m = kNegInf, s = 0.f, sum_z = 0.f;
  for (int64_t b0 = 0; b0 < n; b0 += kSoftmaxBlock) {
    const int64_t len = std::min(kSoftmaxBlock, n - b0);
    Vec vmax(kNegInf), vsum(0.f);
    int64_t i = 0;
    for (; i + kStep <= len; i += kStep) {
      auto [a, b] = load2(x + b0 + i);
      a = cap(a, softcap);
      b = cap(b, softcap);
      a.store(buf + i);
      b.store(buf + i + Vec::size());
      vmax = at::vec::maximum(vmax, at::vec::maximum(a, b));
      if (want_sum) vsum = vsum + a + b;
    }
    float bm = reduce_max(vmax), bs = want_sum ? reduce_sum(vsum) : 0.f;
    for (; i < len; ++i) {
      const float v = cross_entropy::soft_cap(static_cast<float>(x[b0 + i]), softcap);
      buf[i] = v;
      if (v > bm || std::isnan(v)) bm = v;  // a NaN stays (in bm or from v)
      bs += v;
    }
    sum_z += bs;
    if (std::isnan(bm)) return {bm, sum_z};  // a NaN logit (at::vec::maximum propagates it): lse NaN
    const float mn = std::max(m, bm);
    if (mn == kNegInf) continue;  // only -inf so far: nothing to add yet
    s *= std::exp(m - mn);
    const Vec vm(mn);
    Vec acc(0.f);
    i = 0;
    for (; i + Vec::size() <= len; i += Vec::size()) acc = acc + cpu::exp(Vec::loadu(buf + i) - vm);
    float e = reduce_sum(acc);
    for (; i < len; ++i) e += std::exp(buf[i] - mn);
    s += e;
    m = mn;
  }
  return {m + std::log(s), sum_z};
}

}  // namespace eurokernels::cpu
