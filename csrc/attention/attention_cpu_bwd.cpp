// Attention backward on CPU (method and shared helpers: attention_cpu_common.h).
//
// Tasks (document, kv head, slice of its q-head group). A task owns the dK/dV of its kv head (fp32 accumulators)
// and the dQ of its q heads, so no two tasks write the same element: deterministic without atomics. When there are
// too few kv heads x documents to fill the threads, the q-head group is split in slices whose dK/dV partials are
// summed afterwards in a fixed order.
#include "attention/attention.h"
#include "attention/attention_cpu_common.h"

namespace eurokernels::attention {
namespace {

using namespace detail;

// Block sizes (queries x keys): five [64 x 64] tiles per block pair stay in L1/L2.
constexpr int64_t kBwdBQ = 128, kBwdBK = 64;
// dQ^T rows are padded by this many floats: a row stride that is a multiple of 4 KiB would map every row of a GEMM
// tile to the same cache sets.
constexpr int64_t kSkew = 16;

// A operand src^T (row-major [d, nb]).
template <typename T, typename CT>
void pack_t(const T* src, int64_t ld, int64_t n, int64_t nb, int64_t d, CT* dst) {
  for (int64_t r = 0; r < nb; ++r)
    for (int64_t c = 0; c < d; ++c) dst[c * nb + r] = r < n ? cvt<CT>(src[r * ld + c]) : CT(0.f);
}

// fp32 [rows, cols] (rows even, cols a multiple of Vec::size()) -> B operand in CT.
template <typename CT>
void to_b(const float* src, int64_t rows, int64_t cols, CT* dst) {
  if constexpr (std::is_same_v<CT, BF16>) {  // VNNI: interleave row pairs, then round to bf16
    for (int64_t r = 0; r < rows; r += 2)
      for (int64_t c = 0; c < cols; c += Vec::size()) {
        auto [x, y] = at::vec::interleave2(Vec::loadu(src + r * cols + c), Vec::loadu(src + (r + 1) * cols + c));
        at::vec::convert_from_float<BF16>(x, y).store(dst + (r / 2) * cols * 2 + 2 * c);
      }
  } else {
    std::copy(src, src + rows * cols, dst);
  }
}

template <typename T, typename CT>
void backward_impl(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& out, const at::Tensor& lse, const Problem& pb, float scale, int64_t left,
                   int64_t right, float softcap, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t hq = q.size(1), hk = k.size(1), d = q.size(2), group = hq / hk, total_q = q.size(0),
                total_k = k.size(0);
  const Strided<T> Q = strided<T>(q), K = strided<T>(k), V = strided<T>(v), DO = strided<T>(dout),
                   OUT = strided<T>(out);
  const float* L = lse.const_data_ptr<float>();
  T* DQ = dq.mutable_data_ptr<T>();
  T* DK = dk.mutable_data_ptr<T>();
  T* DV = dv.mutable_data_ptr<T>();
  const int64_t blk = kBwdBK * d;

  // K as the A operand of K @ Q^T and (transposed) of K^T @ dS^T; V as the A operand of V @ dO^T.
  auto ka = uninitialized<CT>(pb.total_kb * hk * blk), kt = uninitialized<CT>(pb.total_kb * hk * blk),
       va = uninitialized<CT>(pb.total_kb * hk * blk);
  for_each_key_block(pb, hk, kBwdBK, d, [&](const Doc& doc, int64_t h, int64_t j0, int64_t n, int64_t at) {
    pack_rows(K.row(doc.k0 + j0, h), K.tok, n, kBwdBK, d, ka.get() + at);
    pack_t(K.row(doc.k0 + j0, h), K.tok, n, kBwdBK, d, kt.get() + at);
    pack_rows(V.row(doc.k0 + j0, h), V.tok, n, kBwdBK, d, va.get() + at);
  });
  const int64_t sq_pad = ceil_div(pb.max_sq, kBwdBQ) * kBwdBQ, sk_pad = ceil_div(pb.max_sk, kBwdBK) * kBwdBK;

  // Slices of each q-head group: the fewest that give every thread a few tasks. Their dK/dV partials (fp32) are
  // summed in slice order at the end.
  const int64_t n_docs = static_cast<int64_t>(pb.docs.size());
  int64_t slices = 1;
  while (slices < group && n_docs * hk * slices < 4 * at::get_num_threads()) {
    do ++slices; while (group % slices != 0);
  }
  const int64_t per_slice = group / slices;
  at::Tensor partial = slices > 1 ? at::zeros({slices, 2, total_k, hk, d}, q.options().dtype(at::kFloat)) : at::Tensor();
  float* P = slices > 1 ? partial.mutable_data_ptr<float>() : nullptr;

  struct Task {
    int64_t doc, head, slice, cost;
  };
  std::vector<Task> tasks;
  for (int64_t di = 0; di < n_docs; ++di) {
    const Doc& doc = pb.docs[di];
    const Window w{doc.sq, doc.sk, left, right, kBwdBQ, kBwdBK};
    int64_t cost = 1;
    for (int64_t j0 = 0; j0 < doc.sk; j0 += kBwdBK) {
      auto [b0, b1] = w.query_blocks(j0);
      cost += b1 - b0;
    }
    for (int64_t h = 0; h < hk; ++h)
      for (int64_t s = 0; s < slices; ++s) tasks.push_back({di, h, s, cost});
  }

  struct Buffers {
    std::vector<CT> qbt, qb, dobt, dob, pt, dst, dsb;
    std::vector<float> lse, delta, dqt, dk, dv, st, dpt;
  };
  const int64_t nqb_max = sq_pad / kBwdBQ;
  auto setup = [&] {
    Buffers B;
    for (auto* b : {&B.qbt, &B.qb, &B.dobt, &B.dob}) b->resize(nqb_max * kBwdBQ * d);
    for (auto* b : {&B.pt, &B.dst, &B.dsb}) b->resize(kBwdBK * kBwdBQ);
    B.lse.resize(sq_pad);
    B.delta.resize(sq_pad);
    B.dqt.resize(d * (sq_pad + kSkew));
    B.dk.resize(sk_pad * d);
    B.dv.resize(sk_pad * d);
    B.st.resize(kBwdBK * kBwdBQ);
    B.dpt.resize(kBwdBK * kBwdBQ);
    return B;
  };
  const Scores score(scale, softcap);
  const Vec vone(1.f);
  run_tasks<CT>(tasks, setup, [&](Buffers& B, const Task& task) {
    const Doc& doc = pb.docs[task.doc];
    const Window w{doc.sq, doc.sk, left, right, kBwdBQ, kBwdBK};
    const int64_t nqb = ceil_div(doc.sq, kBwdBQ), nkb = ceil_div(doc.sk, kBwdBK), hkv = task.head;
    const int64_t rows_pad = nqb * kBwdBQ;
    const int64_t ldq = rows_pad + kSkew;  // row stride of dQ^T for this document
    std::fill(B.dk.begin(), B.dk.begin() + nkb * blk, 0.f);
    std::fill(B.dv.begin(), B.dv.begin() + nkb * blk, 0.f);
    for (int64_t g = task.slice * per_slice; g < (task.slice + 1) * per_slice; ++g) {
      const int64_t h = hkv * group + g;
      // This head's Q and dO as GEMM operands, lse (+inf where no key is visible: exp(s - lse) = 0) and
      // delta = rowsum(dO * O) per query.
      for (int64_t qb = 0; qb < nqb; ++qb) {
        const int64_t i0 = qb * kBwdBQ, n = std::min(kBwdBQ, doc.sq - i0), at = qb * kBwdBQ * d;
        pack_bt(Q.row(doc.q0 + i0, h), Q.tok, n, kBwdBQ, d, B.qbt.data() + at);
        pack_b(Q.row(doc.q0 + i0, h), Q.tok, n, kBwdBQ, d, B.qb.data() + at);
        pack_bt(DO.row(doc.q0 + i0, h), DO.tok, n, kBwdBQ, d, B.dobt.data() + at);
        pack_b(DO.row(doc.q0 + i0, h), DO.tok, n, kBwdBQ, d, B.dob.data() + at);
      }
      for (int64_t i = 0; i < rows_pad; ++i) {
        if (i >= doc.sq) {
          B.lse[i] = kInf;
          B.delta[i] = 0.f;
          continue;
        }
        const float l = L[h * total_q + doc.q0 + i];
        B.lse[i] = math::backward_lse(l);
        const T* o = OUT.row(doc.q0 + i, h);
        const T* g_ = DO.row(doc.q0 + i, h);
        float acc = 0.f;
        for (int64_t c = 0; c < d; ++c) acc += static_cast<float>(o[c]) * static_cast<float>(g_[c]);
        B.delta[i] = acc;
      }
      std::fill(B.dqt.begin(), B.dqt.begin() + d * ldq, 0.f);
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t j0 = kb * kBwdBK, at = ((doc.kb0 + kb) * hk + hkv) * blk;
        auto [qb_begin, qb_end] = w.query_blocks(j0);
        for (int64_t qb = qb_begin; qb < qb_end; ++qb) {
          const int64_t i0 = qb * kBwdBQ;
          const auto kind = w.classify(i0, j0);
          if (kind == Window::kSkip) continue;
          const int64_t qat = qb * kBwdBQ * d;
          // S^T = K Q^T and dP^T = V dO^T, [kBwdBK, kBwdBQ]: queries along the rows, so lse and delta are vectors.
          gemm<CT>(kBwdBK, kBwdBQ, d, d, kBwdBQ, kBwdBQ, false, ka.get() + at, B.qbt.data() + qat, B.st.data());
          gemm<CT>(kBwdBK, kBwdBQ, d, d, kBwdBQ, kBwdBQ, false, va.get() + at, B.dobt.data() + qat, B.dpt.data());
          for (int64_t r = 0; r < kBwdBK; ++r) {
            float* s = B.st.data() + r * kBwdBQ;
            float* dp = B.dpt.data() + r * kBwdBQ;
            for (int64_t c = 0; c < kBwdBQ; c += Vec::size()) {
              Vec t(0.f);
              const Vec x = score(Vec::loadu(s + c), t);
              const Vec p = cpu::exp(x - Vec::loadu(B.lse.data() + i0 + c));
              Vec ds = p * (Vec::loadu(dp + c) - Vec::loadu(B.delta.data() + i0 + c));
              if (softcap > 0) ds = ds * math::softcap_grad(t, vone);
              p.store(s + c);
              ds.store(dp + c);
            }
            if (kind == Window::kPartial) {  // a key is seen by one interval of queries: zero both sides
              const auto [a, b] = w.visible_queries(j0 + r, i0, kBwdBQ);
              std::fill(s, s + a, 0.f);
              std::fill(s + b, s + kBwdBQ, 0.f);
              std::fill(dp, dp + a, 0.f);
              std::fill(dp + b, dp + kBwdBQ, 0.f);
            }
            store_row(s, kBwdBQ, B.pt.data() + r * kBwdBQ);
            store_row(dp, kBwdBQ, B.dst.data() + r * kBwdBQ);
          }
          // dV += P^T dO, dK += dS^T Q (scaled at the end), dQ^T += K^T dS^T.
          gemm<CT>(kBwdBK, d, kBwdBQ, kBwdBQ, d, d, true, B.pt.data(), B.dob.data() + qat, B.dv.data() + kb * blk);
          gemm<CT>(kBwdBK, d, kBwdBQ, kBwdBQ, d, d, true, B.dst.data(), B.qb.data() + qat, B.dk.data() + kb * blk);
          to_b<CT>(B.dpt.data(), kBwdBK, kBwdBQ, B.dsb.data());
          gemm<CT>(d, kBwdBQ, kBwdBK, kBwdBK, kBwdBQ, ldq, true, kt.get() + at, B.dsb.data(), B.dqt.data() + i0);
        }
      }
      for (int64_t i = 0; i < doc.sq; ++i) {
        T* o = DQ + ((doc.q0 + i) * hq + h) * d;
        for (int64_t c = 0; c < d; ++c) o[c] = static_cast<T>(B.dqt[c * ldq + i] * scale);
      }
    }
    for (int64_t j = 0; j < doc.sk; ++j) {
      const int64_t row = (doc.k0 + j) * hk + hkv;
      if (P != nullptr) {
        float* pk = P + ((task.slice * 2) * total_k * hk + row) * d;
        float* pv = P + ((task.slice * 2 + 1) * total_k * hk + row) * d;
        for (int64_t c = 0; c < d; ++c) {
          pk[c] = B.dk[j * d + c] * scale;
          pv[c] = B.dv[j * d + c];
        }
      } else {
        for (int64_t c = 0; c < d; ++c) {
          DK[row * d + c] = static_cast<T>(B.dk[j * d + c] * scale);
          DV[row * d + c] = static_cast<T>(B.dv[j * d + c]);
        }
      }
    }
  });
  if (P != nullptr) {
    const int64_t n = total_k * hk * d;
    at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
      for (int64_t x = b; x < e; ++x) {
        float sk = 0.f, sv = 0.f;
        for (int64_t s = 0; s < slices; ++s) {
          sk += P[(s * 2) * n + x];
          sv += P[(s * 2 + 1) * n + x];
        }
        DK[x] = static_cast<T>(sk);
        DV[x] = static_cast<T>(sv);
      }
    });
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& dout, const at::Tensor& q,
                                                            const at::Tensor& k, const at::Tensor& v,
                                                            const at::Tensor& out, const at::Tensor& lse,
                                                            const at::Tensor& cu_seqlens_q,
                                                            const at::Tensor& cu_seqlens_k, int64_t, int64_t,
                                                            double softmax_scale, int64_t window_left,
                                                            int64_t window_right, double softcap) {
  check_qkv(q, k, v);
  check_input(dout, "dout");
  check_input(out, "out");
  CHECK_SAME_SHAPE(dout, q);
  CHECK_SAME_SHAPE(out, q);
  CHECK_DTYPE(dout, q.scalar_type());
  CHECK_DTYPE(out, q.scalar_type());
  CHECK_DTYPE(lse, at::kFloat);
  CHECK_CONTIGUOUS(lse);
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == q.size(1) && lse.size(1) == q.size(0), "lse must be [hq, total_q]");
  const Problem pb = make_problem(cu_seqlens_q, cu_seqlens_k, q.size(0), k.size(0), kBwdBK);
  at::Tensor dq = new_output(pb, q), dk = new_output(pb, k), dv = new_output(pb, v);
  dispatch(q.scalar_type(), [&]<typename T, typename CT>() {
    backward_impl<T, CT>(dout, q, k, v, out, lse, pb, static_cast<float>(softmax_scale), window_left, window_right,
                         static_cast<float>(softcap), dq, dk, dv);
  });
  return {dq, dk, dv};
}

}  // namespace eurokernels::attention
