// Attention on CPU: FlashAttention-2 blockwise with an online softmax; no seqlen x seqlen matrix is ever formed.
// The forward is attention_cpu_fwd.cpp, the backward attention_cpu_bwd.cpp; this header holds what both use.
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
// Everything here is a template or inline: the packing and the score transform run inside the kernels' block
// loops, and must inline into them (lambdas passed as template parameters, no std::function, no virtual calls).
#pragma once
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "attention/attention_math.h"
#include "common.h"
#include "cpu_exp.h"
#include "cpu_vec.h"

namespace eurokernels::attention::detail {

using cpu::Vec;
using BF16 = at::BFloat16;

constexpr float kInf = std::numeric_limits<float>::infinity();

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- GEMM on blocks --------------------------------------------------------------------------------------------

// C[M, N] (+)= A[M, K] @ B[K, N], fp32 C. CT = BFloat16: B in VNNI layout (element (k, n) at ((k/2)*N + n)*2 + k%2);
// CT = float: B row-major. Leading dimensions in elements.
template <typename CT>
inline void gemm(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, bool add, const CT* A,
                 const CT* B, float* C) {
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, add, A, B, C, std::is_same_v<CT, BF16>);
}

// Whether this machine runs the bf16 VNNI micro-kernel (oneDNN needs AVX512-BF16 or AMX); else bf16 inputs take
// the fp32 path. Checked once per process (an inline function's static is shared by both files), on a 2 x 16 x 2
// product.
inline bool bf16_gemm_available() {
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

// fp32 row -> CT row (n a multiple of kStep).
template <typename CT>
inline void store_row(const float* src, int64_t n, CT* dst) {
  for (int64_t i = 0; i < n; i += cpu::kStep)
    cpu::store2(dst + i, Vec::loadu(src + i), Vec::loadu(src + i + Vec::size()));
}

// ---- scores -----------------------------------------------------------------------------------------------------

// tanh for the soft cap, from the kernels' exp (cpu_exp.h): tanh(y) = u / (u + 2) with u = expm1(2y). Near 0,
// u comes from the Taylor series of expm1 to degree 7 (|2y| < 0.34: relative error < 1e-8), so there is no
// e - 1 cancellation; elsewhere u = exp(2y) - 1 (relative error ~3e-7 in tanh, a few ulp). 2y is clamped to
// +-40, where tanh is +-1 in fp32; NaN propagates. Sleef's tanh (at::vec) costs about 3x the whole
// capped score: at S = 2048 a softcap made the forward 1.5x slower than plain causal.
inline Vec tanh_fast(const Vec& y) {
  const Vec z = at::vec::clamp(y + y, Vec(-40.f), Vec(40.f));
  Vec p(1.f / 5040);
  for (float c : {1.f / 720, 1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f}) p = at::vec::fmadd(p, z, Vec(c));
  const Vec small = p * z, large = cpu::exp(z) - Vec(1.f);
  const Vec u = Vec::blendv(large, small, z.abs() < Vec(0.34f));
  return u / (u + Vec(2.f));
}

// Raw q.k -> score: x = scale * s, then softcap * tanh(x / softcap) under a soft cap. t = tanh(x / softcap) is
// returned for the backward's derivative (1 - t^2); it is left untouched without a soft cap.
struct Scores {
  Vec scale, cap, inv_cap;
  bool has_cap;
  Scores(float scale_, float softcap)
      : scale(scale_), cap(softcap), inv_cap(softcap > 0 ? 1.f / softcap : 0.f), has_cap(softcap > 0) {}
  Vec operator()(const Vec& s, Vec& t) const {
    Vec x = s * scale;
    if (has_cap) {
      t = tanh_fast(x * inv_cap);
      x = math::softcap_score(t, cap);
    }
    return x;
  }
};

// ---- masks ------------------------------------------------------------------------------------------------------

// A document's band (math::Band: which keys each query sees, shared with the CUDA kernels) cut into bq x bk blocks.
struct Window : math::Band<int64_t> {
  int64_t bq, bk;  // the block shape
  Window(int64_t sq_, int64_t sk_, int64_t left_, int64_t right_, int64_t bq_, int64_t bk_)
      : math::Band<int64_t>{sq_, sk_, left_, right_}, bq(bq_), bk(bk_) {}

  enum Kind { kSkip, kFull, kPartial };
  // Rows [i0, i0 + bq) x keys [j0, j0 + bk), padding included.
  Kind classify(int64_t i0, int64_t j0) const {
    int64_t a, b;
    if (!keys_of(i0, i0 + bq, &a, &b) || j0 >= b || j0 + bk <= a) return kSkip;
    return full(i0, i0 + bq, j0, j0 + bk) ? kFull : kPartial;
  }
  // The keys query i sees inside the block [j0, j0 + n), as offsets [a, b) into it (a == b: none). Exact: a row's
  // visible keys are one interval (Band), so a partial block is masked by two fills, not a test per element.
  std::pair<int64_t, int64_t> visible_keys(int64_t i, int64_t j0, int64_t n) const {
    int64_t a, b;
    if (!keys_of(i, i + 1, &a, &b)) return {0, 0};
    return clip(a - j0, b - j0, n);
  }
  // The queries that see key j inside the block [i0, i0 + n), as offsets [a, b) (exact for one key: queries_of's
  // superset is the exact set when the key range is a single key inside the document).
  std::pair<int64_t, int64_t> visible_queries(int64_t j, int64_t i0, int64_t n) const {
    int64_t a, b;
    if (!queries_of(j, j + 1, &a, &b)) return {0, 0};
    return clip(a - i0, b - i0, n);
  }
  static std::pair<int64_t, int64_t> clip(int64_t a, int64_t b, int64_t n) {
    a = std::clamp<int64_t>(a, 0, n);
    b = std::clamp<int64_t>(b, 0, n);
    return {a, std::max(a, b)};
  }
  // Key blocks a query block may see, [first, last).
  std::pair<int64_t, int64_t> key_blocks(int64_t i0) const {
    int64_t a, b;
    if (!keys_of(i0, i0 + bq, &a, &b)) return {0, 0};
    return {a / bk, (b - 1) / bk + 1};
  }
  // Query blocks that may see a key block, [first, last).
  std::pair<int64_t, int64_t> query_blocks(int64_t j0) const {
    int64_t a, b;
    if (!queries_of(j0, j0 + bk, &a, &b)) return {0, 0};
    return {a / bq, (b - 1) / bq + 1};
  }
};

// ---- the documents of a packed batch ----------------------------------------------------------------------------

struct Doc {
  int64_t q0, sq, k0, sk, kb0;  // token offsets and lengths; kb0: index of its first key block in the packed K/V
};

struct Problem {
  std::vector<Doc> docs;
  int64_t total_kb = 0;  // key blocks over all documents
  int64_t max_sq = 0, max_sk = 0;
  bool covers_all = true;  // documents tile [0, total_q) and [0, total_k): no output row is left unwritten
};

// bk: the key block size of the packed K/V.
inline Problem make_problem(const at::Tensor& cu_q, const at::Tensor& cu_k, int64_t total_q, int64_t total_k,
                            int64_t bk) {
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
    p.total_kb += ceil_div(d.sk, bk);
    p.max_sq = std::max(p.max_sq, d.sq);
    p.max_sk = std::max(p.max_sk, d.sk);
    covered_q += d.sq;
    covered_k += d.sk;
    p.docs.push_back(d);
  }
  p.covers_all = n > 0 && a[0] == 0 && b[0] == 0 && covered_q == total_q && covered_k == total_k;
  return p;
}

// A fresh output shaped like `like`: uninitialized when the documents write every row, else zeros.
inline at::Tensor new_output(const Problem& pb, const at::Tensor& like) {
  return pb.covers_all ? at::empty(like.sizes(), like.options()) : at::zeros(like.sizes(), like.options());
}

template <typename T>
struct Strided {
  const T* p;
  int64_t tok, head;
  const T* row(int64_t t, int64_t h) const { return p + t * tok + h * head; }
};

// [tokens, heads, d] with a unit stride along d.
template <typename T>
inline Strided<T> strided(const at::Tensor& t) {
  return {t.const_data_ptr<T>(), t.stride(0), t.stride(1)};
}

// Calls pack(doc, h, j0, n, offset) for every key block [j0, j0 + n) of every kv head h of every document, in
// parallel; offset is the block's place in the packed K/V buffers (bk x d elements per block and kv head).
template <typename Pack>
void for_each_key_block(const Problem& pb, int64_t hk, int64_t bk, int64_t d, Pack pack) {
  for (const Doc& doc : pb.docs) {
    at::parallel_for(0, ceil_div(doc.sk, bk) * hk, 1, [&](int64_t b, int64_t e) {
      for (int64_t x = b; x < e; ++x) {
        const int64_t kb = x / hk, h = x % hk, j0 = kb * bk;
        pack(doc, h, j0, std::min(bk, doc.sk - j0), ((doc.kb0 + kb) * hk + h) * bk * d);
      }
    });
  }
}

// A buffer every element of which the packing writes (padding included): no zero fill first.
template <typename CT>
std::unique_ptr<CT[]> uninitialized(int64_t n) {
  return std::unique_ptr<CT[]>(new CT[n]);
}

// ---- scheduling -------------------------------------------------------------------------------------------------

// Sorts the tasks (anything with an int64 `cost`) largest first, then runs fn(state, task) for each on
// at::parallel_for's threads, each thread taking the next task when done; state = setup() is per thread. Which
// thread runs a task never changes its result.
template <typename CT, typename Task, typename Setup, typename Fn>
void run_tasks(std::vector<Task>& tasks, Setup setup, Fn fn) {
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });
  const int64_t n_tasks = static_cast<int64_t>(tasks.size());
  std::atomic<int64_t> next{0};
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_tasks));
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    auto state = setup();
    for (int64_t t = next++; t < n_tasks; t = next++) fn(state, tasks[t]);
    release_gemm<CT>();
  });
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

// ---- argument checks (the internal contract; the Python op validates the user's arguments) ----------------------

// [tokens, heads, d], unit stride along d. Spelled out rather than CHECK_*, which would name the parameter `t`.
inline void check_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on cpu, got ", t.device());
  TORCH_CHECK(t.dim() == 3, name, " must have 3 dimensions, got ", t.dim());
  TORCH_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, name, " must be contiguous in its last dimension");
}

inline void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_input(q, "q");
  check_input(k, "k");
  check_input(v, "v");
  CHECK_DTYPE(k, q.scalar_type());
  CHECK_DTYPE(v, q.scalar_type());
  CHECK_SAME_SHAPE(k, v);
  TORCH_CHECK(k.size(2) == q.size(2) && q.size(2) % 8 == 0 && q.size(2) <= 256,
              "head_dim must match and be a multiple of 8 <= 256");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, "q heads must be a multiple of k heads");
}

}  // namespace eurokernels::attention::detail
