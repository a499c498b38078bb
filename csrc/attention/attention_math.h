// Attention tile math shared by the CPU kernel (attention_cpu_*.cpp) and the CUDA kernels (attention_kernels.cuh):
// the causal / sliding-window / varlen mask predicates and the tile ranges they bound, the online-softmax step and
// the softcap with its derivative. One definition, so the two implementations cannot drift; the CPU tests exercise
// it on every run.
#pragma once
#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace eurokernels::attention::math {

// One document of sq queries and sk keys under a window (left, right) (-1: unbounded on that side; causal is
// right = 0). Query i is aligned bottom-right, at key i + sk - sq, and sees keys [lo(i), hi(i)] (empty when
// hi < lo). I: the index type (int64_t on the CPU, int on the GPU, where document lengths fit 32 bits).
template <typename I>
struct Band {
  I sq, sk, left, right;

  EK_HD I lo(I i) const {
    const I x = i + sk - sq - left;
    return left < 0 || x < 0 ? I(0) : x;
  }
  EK_HD I hi(I i) const {
    const I x = i + sk - sq + right;
    return right < 0 || x > sk - 1 ? sk - 1 : x;
  }
  EK_HD bool visible(I i, I j) const { return i >= 0 && i < sq && j >= 0 && j < sk && j >= lo(i) && j <= hi(i); }

  // The keys [*j_begin, *j_end) some query of [i0, i1) sees (lo and hi never decrease with i, so the union of the
  // rows' ranges is one interval). False when none does.
  EK_HD bool keys_of(I i0, I i1, I* j_begin, I* j_end) const {
    if (i1 > sq) i1 = sq;
    if (i1 <= i0 || sk <= 0) return false;
    const I a = lo(i0), b = hi(i1 - 1);
    if (b < a) return false;
    *j_begin = a;
    *j_end = b + 1;
    return true;
  }
  // The queries [*i_begin, *i_end) that may see some key of [j0, j1) (a superset: rows whose own range is empty
  // inside it see nothing and contribute nothing). False when none can.
  EK_HD bool queries_of(I j0, I j1, I* i_begin, I* i_end) const {
    if (j1 > sk) j1 = sk;
    if (j1 <= j0 || sq <= 0) return false;
    const I shift = sk - sq;
    I a = right < 0 ? I(0) : j0 - shift - right, b = left < 0 ? sq - 1 : j1 - 1 - shift + left;
    if (a < 0) a = 0;
    if (b > sq - 1) b = sq - 1;
    if (b < a) return false;
    *i_begin = a;
    *i_end = b + 1;
    return true;
  }
  // Whether every (query, key) of the tile [i0, i1) x [j0, j1) is visible: such a tile skips the per-element mask.
  EK_HD bool full(I i0, I i1, I j0, I j1) const {
    return i1 <= sq && j1 <= sk && lo(i1 - 1) <= j0 && hi(i0) >= j1 - 1;
  }
};

// ---- softcap: score = cap * tanh(x / cap) for x = scale * q.k; t = tanh(x / cap) is what the backward keeps ------

template <typename V>
EK_HD V softcap_score(const V& t, const V& cap) {
  return cap * t;
}

// d score / d x = 1 - t^2.
template <typename V>
EK_HD V softcap_grad(const V& t, const V& one) {
  return one - t * t;
}

// ---- the online softmax of one row ------------------------------------------------------------------------------

// Folds a block whose largest score is block_max into the running max m (updated in place) and returns alpha, the
// factor the running sum and output row are multiplied by. A row that has seen no visible key yet keeps m = -inf
// and alpha = 1 (its sum and output are still 0). A NaN max stays NaN (fmax / std::max would drop it and the row
// could read as "no key"), so the row's sum, output and lse become NaN, as PyTorch's softmax gives. `exp` is the exponential of the units the scores are in (exp on
// the CPU, exp2 on the GPU, where log2(e) is folded into the scale).
// max that keeps a NaN (std::max(-inf, NaN) is -inf, fmaxf drops NaN).
EK_HD float max_nan(float a, float b) { return a != a || b != b ? NAN : (a > b ? a : b); }

template <typename Exp>
EK_HD float online_step(float& m, float block_max, Exp exp) {
  const float m_new = max_nan(m, block_max);
  const float alpha = m_new == -INFINITY ? 1.f : exp(m - m_new);  // exp(-inf) = 0 for a row's first keys
  m = m_new;
  return alpha;
}

// The max to subtract before exponentiating: 0 for a row that has seen nothing (every score is -inf, and
// -inf - -inf would be NaN; exp(-inf - 0) = 0 as it should).
EK_HD float safe_max(float m) { return m == -INFINITY ? 0.f : m; }

// log-sum-exp of a finished row from its running max m and sum l, in the same units; -inf for a row that saw no
// key (l = 0), NaN for a row with a NaN score (l NaN). `log` is the logarithm of those units.
template <typename Log>
EK_HD float row_lse(float m, float l, Log log) {
  return l == 0.f ? -INFINITY : m + log(l);
}

// 1 / l for the output row: 0 for a row that saw no key (its output is 0), NaN propagates.
EK_HD float row_inv(float l) { return l == 0.f ? 0.f : 1.f / l; }

// In the backward, exp(score - lse) with lse = -inf for a row that sees nothing would be NaN: +inf makes it 0.
EK_HD float backward_lse(float lse) { return lse == -INFINITY ? INFINITY : lse; }

}  // namespace eurokernels::attention::math
