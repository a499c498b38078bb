// Attention forward on CPU (method and shared helpers: attention_cpu_common.h).
//
// Tasks (document, q head, q block), scheduled dynamically, largest first; each loops over the key blocks its rows
// can see (blocks outside the causal/window band are never touched; only blocks crossing the band's edge evaluate
// the mask element by element).
#include "attention/attention.h"
#include "attention/attention_cpu_common.h"

namespace eurokernels::attention {
namespace {

using namespace detail;

// Block sizes (queries x keys). Larger key blocks than the backward's halve the per-block softmax bookkeeping
// (rescaling the output rows).
constexpr int64_t kFwdBQ = 128, kFwdBK = 128;

template <typename T, typename CT>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Problem& pb, float scale,
                  int64_t left, int64_t right, float softcap, at::Tensor& out, at::Tensor& lse) {
  const int64_t hq = q.size(1), hk = k.size(1), d = q.size(2), group = hq / hk, total_q = q.size(0);
  const Strided<T> Q = strided<T>(q), K = strided<T>(k), V = strided<T>(v);
  T* O = out.mutable_data_ptr<T>();
  float* L = lse.mutable_data_ptr<float>();
  const int64_t blk = kFwdBK * d;

  // K as the B operand of Q @ K^T and V as the B operand of P @ V, per (key block, kv head).
  auto kp = uninitialized<CT>(pb.total_kb * hk * blk), vp = uninitialized<CT>(pb.total_kb * hk * blk);
  for_each_key_block(pb, hk, kFwdBK, d, [&](const Doc& doc, int64_t h, int64_t j0, int64_t n, int64_t at) {
    pack_bt(K.row(doc.k0 + j0, h), K.tok, n, kFwdBK, d, kp.get() + at);
    pack_b(V.row(doc.k0 + j0, h), V.tok, n, kFwdBK, d, vp.get() + at);
  });

  struct Task {
    int64_t doc, head, qb, cost;
  };
  std::vector<Task> tasks;
  for (int64_t di = 0; di < static_cast<int64_t>(pb.docs.size()); ++di) {
    const Doc& doc = pb.docs[di];
    const Window w{doc.sq, doc.sk, left, right, kFwdBQ, kFwdBK};
    for (int64_t qb = 0; qb * kFwdBQ < doc.sq; ++qb) {
      auto [b0, b1] = w.key_blocks(qb * kFwdBQ);
      for (int64_t h = 0; h < hq; ++h) tasks.push_back({di, h, qb, b1 - b0});
    }
  }

  struct Buffers {
    std::vector<CT> qa, p;
    std::vector<float> s, o, m, l;
  };
  auto setup = [&] {
    return Buffers{std::vector<CT>(kFwdBQ * d), std::vector<CT>(kFwdBQ * kFwdBK), std::vector<float>(kFwdBQ * kFwdBK),
                   std::vector<float>(kFwdBQ * d), std::vector<float>(kFwdBQ), std::vector<float>(kFwdBQ)};
  };
  const Scores score(scale, softcap);
  run_tasks<CT>(tasks, setup, [&](Buffers& B, const Task& task) {
    const Doc& doc = pb.docs[task.doc];
    const Window w{doc.sq, doc.sk, left, right, kFwdBQ, kFwdBK};
    const int64_t i0 = task.qb * kFwdBQ, rows = std::min(kFwdBQ, doc.sq - i0), h = task.head, hkv = h / group;
    pack_rows(Q.row(doc.q0 + i0, h), Q.tok, rows, kFwdBQ, d, B.qa.data());
    std::fill(B.o.begin(), B.o.end(), 0.f);
    std::fill(B.m.begin(), B.m.end(), -kInf);
    std::fill(B.l.begin(), B.l.end(), 0.f);
    auto [kb_begin, kb_end] = w.key_blocks(i0);
    for (int64_t kb = kb_begin; kb < kb_end; ++kb) {
      const int64_t j0 = kb * kFwdBK;
      const auto kind = w.classify(i0, j0);
      if (kind == Window::kSkip) continue;
      const int64_t at = ((doc.kb0 + kb) * hk + hkv) * blk;
      gemm<CT>(kFwdBQ, kFwdBK, d, d, kFwdBK, kFwdBK, false, B.qa.data(), kp.get() + at, B.s.data());
      for (int64_t r = 0; r < kFwdBQ; ++r) {
        float* s = B.s.data() + r * kFwdBK;
        Vec vmax(-kInf), t;
        for (int64_t j = 0; j < kFwdBK; j += Vec::size()) {
          const Vec x = score(Vec::loadu(s + j), t);
          x.store(s + j);
          vmax = at::vec::maximum(vmax, x);
        }
        float mx = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vmax);
        if (kind == Window::kPartial) {  // a row sees one interval of keys: mask both sides, then a vector max
          const auto [a, b] = w.visible_keys(i0 + r, j0, kFwdBK);
          std::fill(s, s + a, -kInf);
          std::fill(s + b, s + kFwdBK, -kInf);
          vmax = Vec(-kInf);
          for (int64_t j = 0; j < kFwdBK; j += Vec::size()) vmax = at::vec::maximum(vmax, Vec::loadu(s + j));
          mx = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return at::vec::maximum(x, y); }, vmax);
        }
        const float alpha = math::online_step(B.m[r], mx, [](float x) { return std::exp(x); });
        CT* p = B.p.data() + r * kFwdBK;
        if (B.m[r] == -kInf) {  // nothing visible to this row yet
          std::fill(p, p + kFwdBK, CT(0.f));
          continue;
        }
        const Vec vm(B.m[r]);
        Vec vsum(0.f);
        for (int64_t j = 0; j < kFwdBK; j += Vec::size()) {
          Vec e = cpu::exp(Vec::loadu(s + j) - vm);
          vsum = vsum + e;
          e.store(s + j);
        }
        store_row(s, kFwdBK, p);
        B.l[r] = B.l[r] * alpha + at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, vsum);
        if (alpha != 1.f) {
          float* o = B.o.data() + r * d;
          const Vec va(alpha);
          for (int64_t c = 0; c < d; c += Vec::size()) (Vec::loadu(o + c) * va).store(o + c);
        }
      }
      gemm<CT>(kFwdBQ, d, kFwdBK, kFwdBK, d, d, true, B.p.data(), vp.get() + at, B.o.data());
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float l = B.l[r], inv = math::row_inv(l);
      T* o = O + ((doc.q0 + i0 + r) * hq + h) * d;
      for (int64_t c = 0; c < d; ++c) o[c] = static_cast<T>(B.o[r * d + c] * inv);
      L[h * total_q + doc.q0 + i0 + r] = math::row_lse(B.m[r], l, [](float x) { return std::log(x); });
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k,
                                               int64_t, int64_t, double softmax_scale, int64_t window_left,
                                               int64_t window_right, double softcap) {
  check_qkv(q, k, v);
  const Problem pb = make_problem(cu_seqlens_q, cu_seqlens_k, q.size(0), k.size(0), kFwdBK);
  at::Tensor out = new_output(pb, q);
  at::Tensor lse = at::full({q.size(1), q.size(0)}, -kInf, q.options().dtype(at::kFloat));
  dispatch(q.scalar_type(), [&]<typename T, typename CT>() {
    forward_impl<T, CT>(q, k, v, pb, static_cast<float>(softmax_scale), window_left, window_right,
                        static_cast<float>(softcap), out, lse);
  });
  return {out, lse};
}

}  // namespace eurokernels::attention
