// Attention on CPU: FlashAttention-2 blockwise with an online softmax; no seqlen x seqlen matrix is ever formed.
//
// Blocks of queries x keys go through oneDNN's batch-reduce GEMM micro-kernels (at::native::cpublas::
// brgemm, the ones PyTorch's own CPU flash attention uses). bf16 operands are multiplied as bf16 with fp32
// accumulation (AVX512-BF16 dot products; the B operand packed in the VNNI layout: pairs along the reduction
// dimension interleaved); fp16 and fp32 inputs are converted to fp32 blocks and multiplied in fp32. Softmax,
// masks, softcap and every accumulator are fp32. Probabilities P and dS are rounded to the operand type before
// their GEMMs, as in every FlashAttention kernel.
//
// Extra memory is O(seqlen): K/V repacked once into GEMM-ready blocks (the same size as K/V), plus per-thread
// buffers of O(block x head_dim) in the forward and O(seqlen x head_dim) in the backward.
//
// Forward: tasks (document, q head, q block), scheduled dynamically, largest first; each loops over the key blocks
// its rows can see (blocks outside the causal/window band are never touched; only blocks crossing the band's edge
// evaluate the mask element by element).
// Backward: tasks (document, kv head, slice of its q-head group). A task owns the dK/dV of its kv head (fp32
// accumulators) and the dQ of its q heads, so no two tasks write the same element: deterministic without atomics.
// When there are too few kv heads x documents to fill the threads, the q-head group is split in slices whose
// dK/dV partials are summed afterwards in a fixed order.
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "attention/attention.h"
#include "common.h"
#include "cpu_vec.h"

namespace eurokernels::attention {
namespace {

using cpu::Vec;
using BF16 = at::BFloat16;

// Block sizes (queries x keys). The forward's larger key blocks halve the per-block softmax bookkeeping
// (rescaling the output rows); the backward keeps five [64 x 64] tiles per block pair in L1/L2.
constexpr int64_t kFwdBQ = 128, kFwdBK = 128;
constexpr int64_t kBwdBQ = 128, kBwdBK = 64;
// dQ^T rows are padded by this many floats: a row stride that is a multiple of 4 KiB would map every row of a GEMM
// tile to the same cache sets.
constexpr int64_t kSkew = 16;
constexpr float kInf = std::numeric_limits<float>::infinity();

// ---- GEMM on blocks --------------------------------------------------------------------------------------------

// C[M, N] (+)= A[M, K] @ B[K, N], fp32 C. CT = BFloat16: B in VNNI layout (element (k, n) at ((k/2)*N + n)*2 + k%2);
// CT = float: B row-major. Leading dimensions in elements.
template <typename CT>
inline void gemm(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, bool add, const CT* A,
                 const CT* B, float* C) {
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, add, A, B, C, std::is_same_v<CT, BF16>);
}

// Whether this machine runs the bf16 VNNI micro-kernel (oneDNN needs AVX512-BF16 or AMX); else bf16 inputs take
// the fp32 path. Checked once, on a 2 x 16 x 2 product.
bool bf16_gemm_available() {
  static const bool ok = [] {
    try {
      BF16 a[4] = {1.f, 2.f, 3.f, 4.f};
      BF16 b[64];
      for (int i = 0; i < 64; ++i) b[i] = static_cast<float>(i % 2 + 1);  // B[k][n] = k + 1
      float c[32];
      at::native::cpublas::brgemm(2, 16, 2, 2, 16, 16, false, a, b, c, true);
      at::native::cpublas::brgemm_release(true);
      return c[0] == 1.f * 1 + 2.f * 2 && c[16] == 3.f * 1 + 4.f * 2;
    } catch (...) {
      return false;
    }
  }();
  return ok;
}

template <typename CT>
inline void release_gemm() {
  at::native::cpublas::brgemm_release(std::is_same_v<CT, BF16>);
}

// ---- packing blocks of rows (n valid rows of d elements, row stride ld) into GEMM operands, zero-padded to nb ----

template <typename CT, typename T>
inline CT cvt(T x) {
  if constexpr (std::is_same_v<T, CT>) return x;  // bf16 -> bf16: a plain copy
  else return static_cast<CT>(static_cast<float>(x));
}

// A operand (row-major [nb, d]).
template <typename T, typename CT>
void pack_rows(const T* src, int64_t ld, int64_t n, int64_t nb, int64_t d, CT* dst) {
  for (int64_t r = 0; r < nb; ++r)
    for (int64_t c = 0; c < d; ++c) dst[r * d + c] = r < n ? cvt<CT>(src[r * ld + c]) : CT(0.f);
}

// B operand of X @ src^T: B[kk = c][col = r].
template <typename T, typename CT>
void pack_bt(const T* src, int64_t ld, int64_t n, int64_t nb, int64_t d, CT* dst) {
  for (int64_t r = 0; r < nb; ++r)
    for (int64_t c = 0; c < d; ++c) {
      const CT x = r < n ? cvt<CT>(src[r * ld + c]) : CT(0.f);
      if constexpr (std::is_same_v<CT, BF16>) dst[((c / 2) * nb + r) * 2 + (c & 1)] = x;
      else dst[c * nb + r] = x;
    }
}

// B operand of Y @ src: B[kk = r][col = c].
template <typename T, typename CT>
void pack_b(const T* src, int64_t ld, int64_t n, int64_t nb, int64_t d, CT* dst) {
  if constexpr (!std::is_same_v<CT, BF16>) {
    pack_rows(src, ld, n, nb, d, dst);
  } else {
    for (int64_t r = 0; r < nb; ++r)
      for (int64_t c = 0; c < d; ++c) dst[((r / 2) * d + c) * 2 + (r & 1)] = r < n ? cvt<CT>(src[r * ld + c]) : CT(0.f);
  }
}

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

// fp32 row -> CT row (n a multiple of kStep).
template <typename CT>
inline void store_row(const float* src, int64_t n, CT* dst) {
  for (int64_t i = 0; i < n; i += cpu::kStep)
    cpu::store2(dst + i, Vec::loadu(src + i), Vec::loadu(src + i + Vec::size()));
}

// ---- masks ------------------------------------------------------------------------------------------------------

// Keys query i of a document sees: [lo(i), hi(i)], aligned bottom-right (query i sits at key i + sk - sq).
struct Window {
  int64_t sq, sk, left, right, bq, bk;  // bq x bk: the block shape
  int64_t lo(int64_t i) const { return left < 0 ? 0 : std::max<int64_t>(0, i + sk - sq - left); }
  int64_t hi(int64_t i) const { return right < 0 ? sk - 1 : std::min<int64_t>(sk - 1, i + sk - sq + right); }
  bool visible(int64_t i, int64_t j) const { return i < sq && j < sk && j >= lo(i) && j <= hi(i); }

  enum Kind { kSkip, kFull, kPartial };
  // Rows [i0, i0 + bq) x keys [j0, j0 + bk), padding included.
  Kind classify(int64_t i0, int64_t j0) const {
    const int64_t ie = std::min(i0 + bq, sq) - 1, je = std::min(j0 + bk, sk) - 1;
    if (ie < i0 || je < j0 || j0 > hi(ie) || je < lo(i0)) return kSkip;
    const bool full = i0 + bq <= sq && j0 + bk <= sk && lo(ie) <= j0 && hi(i0) >= je;
    return full ? kFull : kPartial;
  }
  // Key blocks a query block may see, [first, last).
  std::pair<int64_t, int64_t> key_blocks(int64_t i0) const {
    const int64_t ie = std::min(i0 + bq, sq) - 1;
    if (ie < i0 || sk == 0 || hi(ie) < lo(i0)) return {0, 0};
    return {lo(i0) / bk, hi(ie) / bk + 1};
  }
  // Query blocks that may see a key block, [first, last).
  std::pair<int64_t, int64_t> query_blocks(int64_t j0) const {
    const int64_t je = std::min(j0 + bk, sk) - 1;
    const int64_t imin = right < 0 ? 0 : std::max<int64_t>(0, j0 - (sk - sq) - right);
    const int64_t imax = left < 0 ? sq - 1 : std::min<int64_t>(sq - 1, je - (sk - sq) + left);
    if (imax < imin || je < j0) return {0, 0};
    return {imin / bq, imax / bq + 1};
  }
};

struct Doc {
  int64_t q0, sq, k0, sk, kb0;  // token offsets and lengths; kb0: index of its first key block in the packed K/V
};

struct Problem {
  std::vector<Doc> docs;
  int64_t total_kb = 0;  // key blocks over all documents
  bool covers_all = true;  // documents tile [0, total_q) and [0, total_k): no output row is left unwritten
};

Problem make_problem(const at::Tensor& cu_q, const at::Tensor& cu_k, int64_t total_q, int64_t total_k, int64_t bk) {
  TORCH_CHECK(cu_q.device().is_cpu() && cu_k.device().is_cpu(), "cu_seqlens must be CPU tensors");
  CHECK_DTYPE(cu_q, at::kInt);
  CHECK_DTYPE(cu_k, at::kInt);
  TORCH_CHECK(cu_q.dim() == 1 && cu_q.sizes() == cu_k.sizes() && cu_q.size(0) >= 1,
              "cu_seqlens_q/k must be 1-D of equal length >= 1");
  const at::Tensor cq = cu_q.contiguous(), ck = cu_k.contiguous();
  const int32_t* a = cq.const_data_ptr<int32_t>();
  const int32_t* b = ck.const_data_ptr<int32_t>();
  Problem p;
  const int64_t n = cq.size(0) - 1;
  int64_t covered_q = 0, covered_k = 0;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(a[i] >= 0 && a[i] <= a[i + 1] && a[i + 1] <= total_q, "cu_seqlens_q must be non-decreasing within [0, ",
                total_q, "], got ", cu_q);
    TORCH_CHECK(b[i] >= 0 && b[i] <= b[i + 1] && b[i + 1] <= total_k, "cu_seqlens_k must be non-decreasing within [0, ",
                total_k, "], got ", cu_k);
    Doc d{a[i], a[i + 1] - a[i], b[i], b[i + 1] - b[i], p.total_kb};
    p.total_kb += (d.sk + bk - 1) / bk;
    covered_q += d.sq;
    covered_k += d.sk;
    p.docs.push_back(d);
  }
  p.covers_all = n > 0 && a[0] == 0 && b[0] == 0 && covered_q == total_q && covered_k == total_k;
  return p;
}

void check_input(const at::Tensor& t, const char* name) {
  CHECK_DEVICE(t, at::kCPU);
  CHECK_DIM(t, 3);
  CHECK_LASTDIM_CONTIGUOUS(t);
}

// Runs fn(task) for every task on at::parallel_for's threads, each thread taking the next task when done (the
// tasks are listed largest first). Which thread runs a task never changes its result.
template <typename CT, typename Setup, typename Fn>
void run_tasks(int64_t n_tasks, Setup setup, Fn fn) {
  std::atomic<int64_t> next{0};
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_tasks));
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    auto state = setup();
    for (int64_t t = next++; t < n_tasks; t = next++) fn(state, t);
    release_gemm<CT>();
  });
}

// A buffer every element of which the packing writes (padding included): no zero fill first.
template <typename CT>
std::unique_ptr<CT[]> uninitialized(int64_t n) {
  return std::unique_ptr<CT[]>(new CT[n]);
}

template <typename T>
struct Strided {
  const T* p;
  int64_t tok, head;
  const T* row(int64_t t, int64_t h) const { return p + t * tok + h * head; }
};

// ---- forward ----------------------------------------------------------------------------------------------------

template <typename T, typename CT>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Problem& pb, float scale,
                  int64_t left, int64_t right, float softcap, at::Tensor& out, at::Tensor& lse) {
  const int64_t hq = q.size(1), hk = k.size(1), d = q.size(2), group = hq / hk, total_q = q.size(0);
  const Strided<T> Q{q.const_data_ptr<T>(), q.stride(0), q.stride(1)};
  const Strided<T> K{k.const_data_ptr<T>(), k.stride(0), k.stride(1)};
  const Strided<T> V{v.const_data_ptr<T>(), v.stride(0), v.stride(1)};
  T* O = out.mutable_data_ptr<T>();
  float* L = lse.mutable_data_ptr<float>();
  const int64_t blk = kFwdBK * d;

  // K as the B operand of Q @ K^T and V as the B operand of P @ V, per (key block, kv head).
  auto kp = uninitialized<CT>(pb.total_kb * hk * blk), vp = uninitialized<CT>(pb.total_kb * hk * blk);
  for (const Doc& doc : pb.docs) {
    const int64_t nkb = (doc.sk + kFwdBK - 1) / kFwdBK;
    at::parallel_for(0, nkb * hk, 1, [&](int64_t b, int64_t e) {
      for (int64_t x = b; x < e; ++x) {
        const int64_t kb = x / hk, h = x % hk, j0 = kb * kFwdBK, n = std::min(kFwdBK, doc.sk - j0);
        const int64_t at = ((doc.kb0 + kb) * hk + h) * blk;
        pack_bt(K.row(doc.k0 + j0, h), K.tok, n, kFwdBK, d, kp.get() + at);
        pack_b(V.row(doc.k0 + j0, h), V.tok, n, kFwdBK, d, vp.get() + at);
      }
    });
  }

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
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });

  struct Buffers {
    std::vector<CT> qa, p;
    std::vector<float> s, o, m, l;
  };
  auto setup = [&] {
    return Buffers{std::vector<CT>(kFwdBQ * d), std::vector<CT>(kFwdBQ * kFwdBK), std::vector<float>(kFwdBQ * kFwdBK),
                   std::vector<float>(kFwdBQ * d), std::vector<float>(kFwdBQ), std::vector<float>(kFwdBQ)};
  };
  const Vec vscale(scale), vcap(softcap), vinv_cap(softcap > 0 ? 1.f / softcap : 0.f);
  run_tasks<CT>(static_cast<int64_t>(tasks.size()), setup, [&](Buffers& B, int64_t ti) {
    const Task& task = tasks[ti];
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
        Vec vmax(-kInf);
        for (int64_t j = 0; j < kFwdBK; j += Vec::size()) {
          Vec x = Vec::loadu(s + j) * vscale;
          if (softcap > 0) x = vcap * (x * vinv_cap).tanh();
          x.store(s + j);
          vmax = at::vec::maximum(vmax, x);
        }
        float mx = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vmax);
        if (kind == Window::kPartial) {
          mx = -kInf;
          for (int64_t j = 0; j < kFwdBK; ++j) {
            if (!w.visible(i0 + r, j0 + j)) s[j] = -kInf;
            mx = std::max(mx, s[j]);
          }
        }
        const float m_new = std::max(B.m[r], mx);
        CT* p = B.p.data() + r * kFwdBK;
        if (m_new == -kInf) {  // nothing visible to this row yet
          std::fill(p, p + kFwdBK, CT(0.f));
          continue;
        }
        const Vec vm(m_new);
        Vec vsum(0.f);
        for (int64_t j = 0; j < kFwdBK; j += Vec::size()) {
          Vec e = (Vec::loadu(s + j) - vm).exp_u20();
          vsum = vsum + e;
          e.store(s + j);
        }
        store_row(s, kFwdBK, p);
        const float alpha = std::exp(B.m[r] - m_new);  // 0 when the row saw nothing before
        B.l[r] = B.l[r] * alpha + at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, vsum);
        B.m[r] = m_new;
        if (alpha != 1.f) {
          float* o = B.o.data() + r * d;
          const Vec va(alpha);
          for (int64_t c = 0; c < d; c += Vec::size()) (Vec::loadu(o + c) * va).store(o + c);
        }
      }
      gemm<CT>(kFwdBQ, d, kFwdBK, kFwdBK, d, d, true, B.p.data(), vp.get() + at, B.o.data());
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float l = B.l[r], inv = l > 0 ? 1.f / l : 0.f;
      T* o = O + ((doc.q0 + i0 + r) * hq + h) * d;
      for (int64_t c = 0; c < d; ++c) o[c] = static_cast<T>(B.o[r * d + c] * inv);
      L[h * total_q + doc.q0 + i0 + r] = l > 0 ? B.m[r] + std::log(l) : -kInf;
    }
  });
}

// ---- backward ---------------------------------------------------------------------------------------------------

template <typename T, typename CT>
void backward_impl(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& out, const at::Tensor& lse, const Problem& pb, float scale, int64_t left,
                   int64_t right, float softcap, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t hq = q.size(1), hk = k.size(1), d = q.size(2), group = hq / hk, total_q = q.size(0),
                total_k = k.size(0);
  const Strided<T> Q{q.const_data_ptr<T>(), q.stride(0), q.stride(1)};
  const Strided<T> K{k.const_data_ptr<T>(), k.stride(0), k.stride(1)};
  const Strided<T> V{v.const_data_ptr<T>(), v.stride(0), v.stride(1)};
  const Strided<T> DO{dout.const_data_ptr<T>(), dout.stride(0), dout.stride(1)};
  const Strided<T> OUT{out.const_data_ptr<T>(), out.stride(0), out.stride(1)};
  const float* L = lse.const_data_ptr<float>();
  T* DQ = dq.mutable_data_ptr<T>();
  T* DK = dk.mutable_data_ptr<T>();
  T* DV = dv.mutable_data_ptr<T>();
  const int64_t blk = kBwdBK * d;

  // K as the A operand of K @ Q^T and (transposed) of K^T @ dS^T; V as the A operand of V @ dO^T.
  auto ka = uninitialized<CT>(pb.total_kb * hk * blk), kt = uninitialized<CT>(pb.total_kb * hk * blk),
       va = uninitialized<CT>(pb.total_kb * hk * blk);
  int64_t max_sq = 0, max_sk = 0;
  for (const Doc& doc : pb.docs) {
    max_sq = std::max(max_sq, doc.sq);
    max_sk = std::max(max_sk, doc.sk);
    const int64_t nkb = (doc.sk + kBwdBK - 1) / kBwdBK;
    at::parallel_for(0, nkb * hk, 1, [&](int64_t b, int64_t e) {
      for (int64_t x = b; x < e; ++x) {
        const int64_t kb = x / hk, h = x % hk, j0 = kb * kBwdBK, n = std::min(kBwdBK, doc.sk - j0);
        const int64_t at = ((doc.kb0 + kb) * hk + h) * blk;
        pack_rows(K.row(doc.k0 + j0, h), K.tok, n, kBwdBK, d, ka.get() + at);
        pack_t(K.row(doc.k0 + j0, h), K.tok, n, kBwdBK, d, kt.get() + at);
        pack_rows(V.row(doc.k0 + j0, h), V.tok, n, kBwdBK, d, va.get() + at);
      }
    });
  }
  const int64_t sq_pad = (max_sq + kBwdBQ - 1) / kBwdBQ * kBwdBQ, sk_pad = (max_sk + kBwdBK - 1) / kBwdBK * kBwdBK;

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
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });

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
  const Vec vscale(scale), vcap(softcap), vinv_cap(softcap > 0 ? 1.f / softcap : 0.f), vone(1.f);
  run_tasks<CT>(static_cast<int64_t>(tasks.size()), setup, [&](Buffers& B, int64_t ti) {
    const Task& task = tasks[ti];
    const Doc& doc = pb.docs[task.doc];
    const Window w{doc.sq, doc.sk, left, right, kBwdBQ, kBwdBK};
    const int64_t nqb = (doc.sq + kBwdBQ - 1) / kBwdBQ, nkb = (doc.sk + kBwdBK - 1) / kBwdBK, hkv = task.head;
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
        B.lse[i] = l == -kInf ? kInf : l;
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
              Vec x = Vec::loadu(s + c) * vscale, t(0.f);
              if (softcap > 0) {
                t = (x * vinv_cap).tanh();
                x = vcap * t;
              }
              const Vec p = (x - Vec::loadu(B.lse.data() + i0 + c)).exp_u20();
              Vec ds = p * (Vec::loadu(dp + c) - Vec::loadu(B.delta.data() + i0 + c));
              if (softcap > 0) ds = ds * (vone - t * t);
              p.store(s + c);
              ds.store(dp + c);
            }
            if (kind == Window::kPartial) {
              for (int64_t c = 0; c < kBwdBQ; ++c) {
                if (!w.visible(i0 + c, j0 + r)) s[c] = dp[c] = 0.f;
              }
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

// Runs body.template operator()<T, CT>() with T the storage type and CT the GEMM operand type.
template <typename F>
void dispatch(at::ScalarType dtype, F&& body) {
  EK_DISPATCH_FLOAT_TYPES(dtype, "attention_cpu", [&] {
    if constexpr (std::is_same_v<scalar_t, BF16>) {
      if (bf16_gemm_available()) return body.template operator()<scalar_t, BF16>();
    }
    return body.template operator()<scalar_t, float>();
  });
}

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_input(q, "q");
  check_input(k, "k");
  check_input(v, "v");
  CHECK_DTYPE(k, q.scalar_type());
  CHECK_DTYPE(v, q.scalar_type());
  CHECK_SAME_SHAPE(k, v);
  TORCH_CHECK(k.size(2) == q.size(2) && q.size(2) % 8 == 0 && q.size(2) <= 256, "head_dim must match and be a multiple of 8 <= 256");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, "q heads must be a multiple of k heads");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k,
                                               int64_t, int64_t, double softmax_scale, int64_t window_left,
                                               int64_t window_right, double softcap) {
  check_qkv(q, k, v);
  const Problem pb = make_problem(cu_seqlens_q, cu_seqlens_k, q.size(0), k.size(0), kFwdBK);
  at::Tensor out = pb.covers_all ? at::empty(q.sizes(), q.options()) : at::zeros(q.sizes(), q.options());
  at::Tensor lse = at::full({q.size(1), q.size(0)}, -std::numeric_limits<float>::infinity(),
                            q.options().dtype(at::kFloat));
  dispatch(q.scalar_type(), [&]<typename T, typename CT>() {
    forward_impl<T, CT>(q, k, v, pb, static_cast<float>(softmax_scale), window_left, window_right,
                        static_cast<float>(softcap), out, lse);
  });
  return {out, lse};
}

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
  auto alloc = [&](const at::Tensor& t) { return pb.covers_all ? at::empty(t.sizes(), t.options()) : at::zeros(t.sizes(), t.options()); };
  at::Tensor dq = alloc(q), dk = alloc(k), dv = alloc(v);
  dispatch(q.scalar_type(), [&]<typename T, typename CT>() {
    backward_impl<T, CT>(dout, q, k, v, out, lse, pb, static_cast<float>(softmax_scale), window_left, window_right,
                         static_cast<float>(softcap), dq, dk, dv);
  });
  return {dq, dk, dv};
}

}  // namespace eurokernels::attention
