// Rotary embeddings on CPU: one pass over q and k (read, rotate, write), tokens spread over threads with
// at::parallel_for, each head vectorized with at::vec. Per token, the cos/sin row is expanded once into fp32
// buffers (sin negated for the conjugate rotation, and for the interleaved layout duplicated per pair with the
// sign pattern folded in), so the inner loops are pure fused multiply-adds on the head's features. In place
// (q_out == q) the kernel reads and rewrites the rotated features only.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "common.h"
#include "cpu_alloc.h"
#include "cpu_vec.h"
#include "rotary/rotary.h"
#include "rotary/rotary_common.h"

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace eurokernels::rotary {
namespace {

using cpu::kStep;
using cpu::Vec;

// [v0, v1, v2, v3, ...] -> [v1, v0, v3, v2, ...]: the partner of every feature in the interleaved (GPT-J) layout.
inline Vec swap_pairs(const Vec& v) {
#if defined(CPU_CAPABILITY_AVX512)
  return Vec(_mm512_permute_ps(__m512(v), 0xB1));
#elif defined(CPU_CAPABILITY_AVX2)
  return Vec(_mm256_permute_ps(__m256(v), 0xB1));
#else
  float a[Vec::size()];
  v.store(a);
  for (int i = 0; i < Vec::size(); i += 2) std::swap(a[i], a[i + 1]);
  return Vec::loadu(a);
#endif
}

// NeoX / Llama layout: feature i pairs with i + half. c, s: the token's fp32 cos / (signed) sin, [half].
template <typename T>
void rotate_halves(const T* x, T* o, const float* c, const float* s, int64_t half) {
  int64_t i = 0;
  for (; i + kStep <= half; i += kStep) {
    auto [x1a, x1b] = cpu::load2(x + i);
    auto [x2a, x2b] = cpu::load2(x + half + i);
    const Vec ca = Vec::loadu(c + i), cb = Vec::loadu(c + i + Vec::size());
    const Vec sa = Vec::loadu(s + i), sb = Vec::loadu(s + i + Vec::size());
    cpu::store2(o + i, at::vec::fmsub(x1a, ca, x2a * sa), at::vec::fmsub(x1b, cb, x2b * sb));
    cpu::store2(o + half + i, at::vec::fmadd(x2a, ca, x1a * sa), at::vec::fmadd(x2b, cb, x1b * sb));
  }
  for (; i < half; ++i) {
    float o1, o2;
    rotate_pair(static_cast<float>(x[i]), static_cast<float>(x[half + i]), c[i], s[i], o1, o2);
    o[i] = static_cast<T>(o1);
    o[half + i] = static_cast<T>(o2);
  }
}

// GPT-J layout: features 2j and 2j + 1 pair. cd = [c0, c0, c1, c1, ...], sd = [-s0, s0, -s1, s1, ...], [2 * half]:
// out = x * cd + swap_pairs(x) * sd.
template <typename T>
void rotate_interleaved(const T* x, T* o, const float* cd, const float* sd, int64_t half) {
  const int64_t r = 2 * half;
  int64_t i = 0;
  for (; i + kStep <= r; i += kStep) {
    auto [a, b] = cpu::load2(x + i);
    const int64_t j = i + Vec::size();
    const Vec oa = at::vec::fmadd(a, Vec::loadu(cd + i), swap_pairs(a) * Vec::loadu(sd + i));
    const Vec ob = at::vec::fmadd(b, Vec::loadu(cd + j), swap_pairs(b) * Vec::loadu(sd + j));
    cpu::store2(o + i, oa, ob);
  }
  for (; i < r; i += 2) {
    float o1, o2;
    rotate_pair(static_cast<float>(x[i]), static_cast<float>(x[i + 1]), cd[i], sd[i + 1], o1, o2);
    o[i] = static_cast<T>(o1);
    o[i + 1] = static_cast<T>(o2);
  }
}

struct Side {  // q or k: input and output base pointers with their [batch, seqlen, head] strides
  const void* x;
  void* o;
  int64_t heads, sxb, sxs, sxh, sob, sos, soh;
};

Side side_of(const at::Tensor& x, const at::Tensor& o) {
  return {x.const_data_ptr(), o.data_ptr(), x.size(2), x.stride(0), x.stride(1), x.stride(2),
          o.stride(0),        o.stride(1),  o.stride(2)};
}

template <typename T, typename C>
void run(const Side& qs, const Side& ks, const C* cos, const C* sin, const int64_t* pos, const int32_t* cu,
         int64_t n_seqs, int64_t n_positions, int64_t batch, int64_t seqlen, int64_t head_dim, int64_t half,
         bool interleaved, bool conjugate) {
  const int64_t tokens = batch * seqlen, r = 2 * half;
  const int64_t per_token = (qs.heads + ks.heads) * head_dim;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(per_token, 1));
  const float sign = conjugate ? -1.f : 1.f;
  at::parallel_for(0, tokens, grain, [&](int64_t t0, int64_t t1) {
    std::vector<float> cbuf(r), sbuf(r);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / seqlen, s = t % seqlen;
      const int64_t p = token_position(t, s, pos, cu, n_seqs, n_positions);
      const float nan = std::numeric_limits<float>::quiet_NaN();
      for (int64_t i = 0; i < half; ++i) {
        const float c = p >= 0 ? static_cast<float>(cos[p * half + i]) : nan;
        const float sn = p >= 0 ? sign * static_cast<float>(sin[p * half + i]) : nan;
        if (interleaved) {
          cbuf[2 * i] = cbuf[2 * i + 1] = c;
          sbuf[2 * i] = -sn;
          sbuf[2 * i + 1] = sn;
        } else {
          cbuf[i] = c;
          sbuf[i] = sn;
        }
      }
      for (const Side* sd : {&qs, &ks}) {
        const T* x = static_cast<const T*>(sd->x) + b * sd->sxb + s * sd->sxs;
        T* o = static_cast<T*>(sd->o) + b * sd->sob + s * sd->sos;
        for (int64_t h = 0; h < sd->heads; ++h) {
          const T* xh = x + h * sd->sxh;
          T* oh = o + h * sd->soh;
          if (interleaved) {
            rotate_interleaved(xh, oh, cbuf.data(), sbuf.data(), half);
          } else {
            rotate_halves(xh, oh, cbuf.data(), sbuf.data(), half);
          }
          if (oh != xh && r < head_dim) std::memcpy(oh + r, xh + r, (head_dim - r) * sizeof(T));  // pass-through
        }
      }
    }
  });
}

}  // namespace

Outputs forward_cpu(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& q_out_arg,
                   const std::optional<at::Tensor>& k_out_arg, const at::Tensor& cos, const at::Tensor& sin,
                   const std::optional<at::Tensor>& position_ids, const std::optional<at::Tensor>& cu_seqlens,
                   bool interleaved, bool conjugate) {
  CHECK_DEVICE(q, at::kCPU);
  CHECK_DIM(q, 4);
  CHECK_DIM(k, 4);
  const at::Tensor q_out = q_out_arg ? *q_out_arg : cpu::empty_output(q.sizes(), q.options());
  const at::Tensor k_out = k_out_arg ? *k_out_arg : cpu::empty_output(k.sizes(), k.options());
  for (const at::Tensor* t : {&k, &q_out, &k_out, &cos, &sin}) CHECK_DEVICE(*t, at::kCPU);
  check_args(q, k, q_out, k_out, cos, sin, position_ids, cu_seqlens);
  const int64_t batch = q.size(0), seqlen = q.size(1), head_dim = q.size(3), half = cos.size(1);
  if (batch * seqlen == 0) return {q_out, k_out};
  const Side qs = side_of(q, q_out), ks = side_of(k, k_out);
  const int64_t* pos = position_ids ? position_ids->const_data_ptr<int64_t>() : nullptr;
  const int32_t* cu = cu_seqlens ? cu_seqlens->const_data_ptr<int32_t>() : nullptr;
  const int64_t n_seqs = cu_seqlens ? cu_seqlens->numel() - 1 : 0;
  EK_DISPATCH_FLOAT_TYPES(q.scalar_type(), "rotary::forward_cpu", [&] {
    if (cos.scalar_type() == at::kFloat) {
      run<scalar_t, float>(qs, ks, cos.const_data_ptr<float>(), sin.const_data_ptr<float>(), pos, cu, n_seqs,
                           cos.size(0), batch, seqlen, head_dim, half, interleaved, conjugate);
    } else {
      run<scalar_t, scalar_t>(qs, ks, cos.const_data_ptr<scalar_t>(), sin.const_data_ptr<scalar_t>(), pos, cu,
                              n_seqs, cos.size(0), batch, seqlen, head_dim, half, interleaved, conjugate);
    }
  });
  return {q_out, k_out};
}

}  // namespace eurokernels::rotary
