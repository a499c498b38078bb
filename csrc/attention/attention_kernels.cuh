// FlashAttention-2 on NVIDIA tensor cores (sm_80 instruction path: cp.async, ldmatrix, mma.sync.m16n8k16 with
// fp32 accumulation; sm_90 runs the same code). Templates over (T = __half / __nv_bfloat16, D = head-dim class);
// each (D, T) is instantiated in its own translation unit under attention/inst/ so the build parallelizes.
//
// Forward (one block per (query tile, q head, document), kWarps warps of 16 query rows each): Q stays in shared
// memory, K/V tiles stream through two shared-memory buffers (the next tile's cp.async in flight while the current
// one is multiplied), fragments come from ldmatrix, S = Q K^T and O += P V are mma.sync with fp32 accumulators,
// and the online softmax runs in registers in log2 units (log2(e) folded into the scale, exp2). Key tiles outside
// the causal / window / document band are never loaded; only tiles crossing its edge evaluate the mask.
//
// Backward, deterministic without atomics: a pre-pass D = rowsum(dO * O) (attention.cu), then
//   dK/dV: one block per (key tile, kv head, document), looping over the GQA group's q heads and the query tiles
//          that see the key tile, in a fixed order; P^T and dS^T are recomputed from the saved lse and staged in
//          shared memory, then dV += P^T dO and dK += dS^T Q with the warps split over (key rows, head-dim halves);
//   dQ:    one block per (query tile, q head, document), looping over its key tiles like the forward (the two
//          extra matmuls of recomputing P there cost less than atomics, and keep dQ bitwise deterministic).
// Shared-memory rows are padded by 8 elements (16 bytes): ldmatrix's eight row addresses then fall in distinct
// bank groups. Head-dim columns past d are zero-filled by cp.async (src-size 0) and never stored.
#pragma once
#include "attention/attention_launch.h"
#include "attention/attention_math.h"
#include "cuda_mma.cuh"
#include "cuda_utils.cuh"

namespace eurokernels::attention {

using namespace eurokernels::cuda;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Tile shapes per head-dim class. Registers per thread are dominated by the fp32 accumulators (16 x D per warp in
// the forward and dQ: D / 2 floats per thread), shared memory by the padded tiles; both checked per target by
// `python -m eurokernels.inspect` (no spills, within sm_80's 163 KB).
template <int D>
struct Tiles {
  static constexpr int kLd = D + 8;  // shared-memory row stride (elements)
  // forward and dQ: kWarps x 16 query rows, kBn keys per streamed tile (half the keys at D = 256: registers)
  static constexpr int kWarps = 4, kBm = 64, kBn = D >= 256 ? 32 : 64;
  // dK/dV: kBwdBn keys x kBwdBm queries, 8 warps: 4 along the keys x 2 along the queries (P^T, dS^T) or along the
  // head dim (dK, dV accumulators: 2 x 16 x D / 2 per warp)
  static constexpr int kBwdWarps = 8, kBwdBn = 64, kBwdBm = D >= 256 ? 32 : 64;
  static constexpr int kBwdLdP = kBwdBm + 8;

  static constexpr size_t fwd_smem(size_t elem) { return elem * kLd * (kBm + 4 * kBn); }
  static constexpr size_t dq_smem(size_t elem) { return elem * kLd * (2 * kBm + 4 * kBn); }
  static constexpr size_t dkdv_smem(size_t elem) {
    return elem * (kLd * (2 * kBwdBn + 2 * kBwdBm) + 2 * kBwdBn * kBwdLdP) + 2 * sizeof(float) * kBwdBm;
  }
};

// Where a document's rows live, from cu_seqlens (on the device: no host sync).
struct DocSpan {
  int q0, sq, k0, sk;
};

__device__ __forceinline__ DocSpan doc_span(const Params& p, int doc) {
  const int q0 = p.cu_q[doc], k0 = p.cu_k[doc];
  return {q0, p.cu_q[doc + 1] - q0, k0, p.cu_k[doc + 1] - k0};
}

// Two fp32 values rounded to T, as one 32-bit register (the lower index in the lower half).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  Pack<T, 2> pk;
  pk.v[0] = from_float<T>(lo);
  pk.v[1] = from_float<T>(hi);
  return *reinterpret_cast<const uint32_t*>(&pk);
}

// ROWS x D elements of a [tokens, heads, d] tensor (rows `g`, `g + tok`, ...) into shared memory (row stride kLd)
// by 16-byte cp.async; rows past `rows` and columns past `d` are zero-filled without reading global memory.
template <int ROWS, int D, typename T>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t tok, int rows, int d) {
  constexpr int kChunks = D / 8;
  for (int i = threadIdx.x; i < ROWS * kChunks; i += blockDim.x) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    const bool in = r < rows && c < d;
    cp_async<16>(s + r * Tiles<D>::kLd + c, in ? g + r * tok + c : g, in ? 16 : 0);
  }
}

// The K/V tiles of one kv head of a document streamed through two shared-memory buffers (sK, sV: [2][BN][kLd]).
template <typename T, int D, int BN>
struct KvStream {
  T* sK;
  T* sV;
  const T* K;  // the document's first key of this kv head
  const T* V;
  int64_t k_tok, v_tok;
  int sk, d;

  // Issues the cp.async copies of key tile kb into buffer buf (not committed).
  __device__ __forceinline__ void load(int kb, int buf) const {
    const int j0 = kb * BN;
    load_tile<BN, D>(sK + buf * BN * Tiles<D>::kLd, K + int64_t(j0) * k_tok, k_tok, sk - j0, d);
    load_tile<BN, D>(sV + buf * BN * Tiles<D>::kLd, V + int64_t(j0) * v_tok, v_tok, sk - j0, d);
  }
  // Before tile kb of [kb_begin, kb_end) is used: the next tile's copies go into the other buffer (in flight while
  // this one is multiplied), then tile kb's are awaited and made visible to the block. Returns kb's buffer. The
  // caller ends each tile with a barrier, so that no warp still reads a buffer the next call refills.
  __device__ __forceinline__ int advance(int kb, int kb_begin, int kb_end) const {
    const int buf = (kb - kb_begin) & 1;
    if (kb + 1 < kb_end) load(kb + 1, buf ^ 1);
    cp_async_commit();  // (an empty group on the last tile keeps the wait below uniform)
    cp_async_wait<1>();
    __syncthreads();
    return buf;
  }
};

// A fragment (16 x 16, row major) of rows [r0, r0 + 16), columns [c0, c0 + 16) of a shared tile (row stride ld).
template <typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* s, int ld, int r0, int c0) {
  const int lane = threadIdx.x & 31;
  ldmatrix<4, false>(a, s + (r0 + (lane & 15)) * ld + c0 + (lane >> 4) * 8);
}

// B fragments of two n8 tiles (b[0..1]: columns n0..n0+7, b[2..3]: n0+8..n0+15) from a tile stored [n][k]
// (the k dimension contiguous: K for Q K^T, Q / dO for the transposed products): k rows [k0, k0 + 16).
template <typename T>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const T* s, int ld, int n0, int k0) {
  const int lane = threadIdx.x & 31;
  ldmatrix<4, false>(b, s + (n0 + (lane >> 4) * 8 + (lane & 7)) * ld + k0 + ((lane >> 3) & 1) * 8);
}

// The same from a tile stored [k][n] (n contiguous: V for P V, K for dS K, Q / dO for dS^T Q, P^T dO): .trans.
template <typename T>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const T* s, int ld, int k0, int n0) {
  const int lane = threadIdx.x & 31;
  ldmatrix<4, true>(b, s + (k0 + (lane & 15)) * ld + n0 + (lane >> 4) * 8);
}

template <typename T>
__device__ __forceinline__ void mma2(float (&c0)[4], float (&c1)[4], const uint32_t (&a)[4], const uint32_t (&b)[4]) {
  const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
  mma_m16n8k16<T>(c0, a, b0, c0);
  mma_m16n8k16<T>(c1, a, b1, c1);
}

// The accumulator fragments of a 16 x 16k score tile (C layout) repacked as the A fragments of the next product
// (P V, dS K, P^T dO, ...): n8 tiles 2kk and 2kk + 1 form k step kk.
template <typename T>
__device__ __forceinline__ void to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack2<T>(c0[0], c0[1]);
  a[1] = pack2<T>(c0[2], c0[3]);
  a[2] = pack2<T>(c1[0], c1[1]);
  a[3] = pack2<T>(c1[2], c1[3]);
}

template <int N>
__device__ __forceinline__ void zero(float (&c)[N][4]) {
#pragma unroll
  for (int n = 0; n < N; ++n) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.f;
}

// c (16 x 8N, C layout) += A B^T over the head dim: A rows [a_row, a_row + 16) of sa, B rows [b_row, b_row + 8N)
// of sb, both [rows][kLd] tiles with the head dim contiguous (Q K^T, dO V^T, K Q^T, V dO^T). Head-dim columns past
// d are zero padding: their products are skipped.
template <typename T, int D, int N>
__device__ __forceinline__ void product_nt(float (&c)[N][4], const T* sa, int a_row, const T* sb, int b_row, int d) {
  static_assert(N % 2 == 0, "whole 16-wide B fragments");
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    if (kk * 16 >= d) break;
    uint32_t a[4];
    load_a(a, sa, Tiles<D>::kLd, a_row, kk * 16);
#pragma unroll
    for (int n2 = 0; n2 < N / 2; ++n2) {
      uint32_t b[4];
      load_b_nk(b, sb, Tiles<D>::kLd, b_row + n2 * 16, kk * 16);
      mma2<T>(c[2 * n2], c[2 * n2 + 1], a, b);
    }
  }
}

// acc (16 x D, C layout) += P B: P a 16 x 8N tile of fp32 accumulators (rounded to T here), B rows [0, 8N) of sb
// ([rows][kLd], the head dim contiguous: V for P V, K for dS K).
template <typename T, int D, int N>
__device__ __forceinline__ void product_pv(float (&acc)[D / 8][4], const float (&pr)[N][4], const T* sb, int d) {
#pragma unroll
  for (int kk = 0; kk < N / 2; ++kk) {
    uint32_t a[4];
    to_a<T>(a, pr[2 * kk], pr[2 * kk + 1]);
#pragma unroll
    for (int n2 = 0; n2 < D / 16; ++n2) {
      if (n2 * 16 >= d) break;
      uint32_t b[4];
      load_b_kn(b, sb, Tiles<D>::kLd, kk * 16, n2 * 16);
      mma2<T>(acc[2 * n2], acc[2 * n2 + 1], a, b);
    }
  }
}

// Stores a warp's 16 x 8N accumulator tile (C layout), row r (0..15) times mul[r >= 8], to out + r * ld + col0 + c
// for rows < rows and columns < d (padding never stored).
template <typename T, int N>
__device__ __forceinline__ void store_tile(const float (&c)[N][4], T* out, int64_t ld, int rows, int col0, int d,
                                           const float (&mul)[2]) {
  const int lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = g + 8 * r;
    if (i >= rows) continue;
#pragma unroll
    for (int n = 0; n < N; ++n) {
      const int col = col0 + n * 8 + 2 * tq;
      if (col < d) {
        const float pair[2] = {c[n][2 * r] * mul[r], c[n][2 * r + 1] * mul[r]};
        store_f32<T, 2>(out + int64_t(i) * ld + col, pair);
      }
    }
  }
}

// scale * s, soft-capped, in log2 units; *t = tanh(x / cap) for the backward (1 without a cap).
__device__ __forceinline__ float score_log2(float s, const Params& p, float* t) {
  if (p.softcap > 0.f) {
    *t = tanhf(s * p.scale / p.softcap);
    return math::softcap_score(*t, p.softcap) * kLog2e;
  }
  *t = 1.f;
  return s * (p.scale * kLog2e);
}

// ------------------------------------------------------------------------------------------------------- forward

template <typename T, int D>
__global__ void __launch_bounds__(Tiles<D>::kWarps * 32) attention_fwd_kernel(const Params p) {
  using Tl = Tiles<D>;
  constexpr int kBm = Tl::kBm, kBn = Tl::kBn, kLd = Tl::kLd;
  EK_DYNAMIC_SHARED(T, smem);
  T* sQ = smem;             // [kBm][kLd]
  T* sK = sQ + kBm * kLd;   // [2][kBn][kLd]
  T* sV = sK + 2 * kBn * kLd;  // [2][kBn][kLd]

  const DocSpan doc = doc_span(p, blockIdx.z);
  const int i0 = blockIdx.x * kBm, h = blockIdx.y;
  if (i0 >= doc.sq) return;  // the grid is sized by max_seqlen_q: blocks past this document's end have no rows
  const int hkv = h / (p.hq / p.hk), rows = min(kBm, doc.sq - i0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const math::Band<int> band{doc.sq, doc.sk, p.left, p.right};

  const T* Q = static_cast<const T*>(p.q) + int64_t(doc.q0 + i0) * p.q_tok + int64_t(h) * p.q_head;
  const T* K = static_cast<const T*>(p.k) + int64_t(doc.k0) * p.k_tok + int64_t(hkv) * p.k_head;
  const T* V = static_cast<const T*>(p.v) + int64_t(doc.k0) * p.v_tok + int64_t(hkv) * p.v_head;
  T* O = static_cast<T*>(p.out) + int64_t(doc.q0 + i0) * p.hq * p.d + int64_t(h) * p.d;
  float* L = p.lse + int64_t(h) * p.total_q + doc.q0 + i0;

  int j_begin = 0, j_end = 0;
  const bool any = band.keys_of(i0, i0 + rows, &j_begin, &j_end);
  const int kb_begin = j_begin / kBn, kb_end = any ? (j_end - 1) / kBn + 1 : kb_begin;

  float acc[D / 8][4];
  zero(acc);
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  const KvStream<T, D, kBn> kv{sK, sV, K, V, p.k_tok, p.v_tok, doc.sk, p.d};
  if (kb_begin < kb_end) {
    load_tile<kBm, D>(sQ, Q, p.q_tok, rows, p.d);
    kv.load(kb_begin, 0);
    cp_async_commit();
  }
  for (int kb = kb_begin; kb < kb_end; ++kb) {
    const int buf = kv.advance(kb, kb_begin, kb_end), j0 = kb * kBn;
    const T* k_tile = sK + buf * kBn * kLd;
    const T* v_tile = sV + buf * kBn * kLd;

    // S = Q K^T for this warp's 16 rows.
    float s[kBn / 8][4];
    zero(s);
    product_nt<T, D>(s, sQ, warp * 16, k_tile, 0, p.d);

    // Scores in log2 units, masked on tiles crossing the band's edge; the online softmax per row (rows g, g + 8
    // of the warp's 16; a row's 4 threads tq = 0..3 combine through shuffles).
    const int row0 = i0 + warp * 16 + g;
    const bool full = band.full(i0, i0 + kBm, j0, j0 + kBn);
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kBn / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float t;
        float x = score_log2(s[n][e], p, &t);
        if (!full && !band.visible(row0 + 8 * (e >> 1), j0 + n * 8 + 2 * tq + (e & 1))) x = -INFINITY;
        s[n][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float alpha = math::online_step(m[r], mx[r], [](float x) { return exp2f(x); });
      l[r] *= alpha;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        acc[n][2 * r] *= alpha;
        acc[n][2 * r + 1] *= alpha;
      }
    }
    const float msub[2] = {math::safe_max(m[0]), math::safe_max(m[1])};
#pragma unroll
    for (int n = 0; n < kBn / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[n][e] = exp2f(s[n][e] - msub[e >> 1]);
        l[e >> 1] += s[n][e];  // this thread's part of the row sum; the 4 parts are added at the end
      }
    }

    // O += P V: P from registers (rounded to T), V fragments by ldmatrix.trans.
    product_pv<T, D>(acc, s, v_tile, p.d);
    __syncthreads();  // every warp is done with this buffer before the next iteration refills it
  }

  // out = acc / l (rows that saw no key: 0), lse = m + log2(l) in natural units (-inf for those rows).
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    inv[r] = math::row_inv(l[r]);
    const int i = warp * 16 + g + 8 * r;
    if (tq == 0 && i < rows) L[i] = math::row_lse(m[r], l[r], [](float x) { return log2f(x); }) * kLn2;
  }
  store_tile(acc, O + int64_t(warp * 16) * p.hq * p.d, int64_t(p.hq) * p.d, rows - warp * 16, 0, p.d, inv);
}

// ---------------------------------------------------------------------------------------------------- dQ

template <typename T, int D>
__global__ void __launch_bounds__(Tiles<D>::kWarps * 32) attention_bwd_dq_kernel(const Params p) {
  using Tl = Tiles<D>;
  constexpr int kBm = Tl::kBm, kBn = Tl::kBn, kLd = Tl::kLd;
  EK_DYNAMIC_SHARED(T, smem);
  T* sQ = smem;                  // [kBm][kLd]
  T* sDO = sQ + kBm * kLd;       // [kBm][kLd]
  T* sK = sDO + kBm * kLd;       // [2][kBn][kLd]
  T* sV = sK + 2 * kBn * kLd;    // [2][kBn][kLd]

  const DocSpan doc = doc_span(p, blockIdx.z);
  const int i0 = blockIdx.x * kBm, h = blockIdx.y;
  if (i0 >= doc.sq) return;
  const int hkv = h / (p.hq / p.hk), rows = min(kBm, doc.sq - i0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const math::Band<int> band{doc.sq, doc.sk, p.left, p.right};

  const T* Q = static_cast<const T*>(p.q) + int64_t(doc.q0 + i0) * p.q_tok + int64_t(h) * p.q_head;
  const T* DO = static_cast<const T*>(p.dout) + int64_t(doc.q0 + i0) * p.do_tok + int64_t(h) * p.do_head;
  const T* K = static_cast<const T*>(p.k) + int64_t(doc.k0) * p.k_tok + int64_t(hkv) * p.k_head;
  const T* V = static_cast<const T*>(p.v) + int64_t(doc.k0) * p.v_tok + int64_t(hkv) * p.v_head;
  T* DQ = static_cast<T*>(p.dq) + int64_t(doc.q0 + i0) * p.hq * p.d + int64_t(h) * p.d;

  int j_begin = 0, j_end = 0;
  const bool any = band.keys_of(i0, i0 + rows, &j_begin, &j_end);
  const int kb_begin = j_begin / kBn, kb_end = any ? (j_end - 1) / kBn + 1 : kb_begin;

  // This thread's two rows: lse (log2 units, +inf for rows that see nothing) and delta.
  float lse2[2], dlt[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = warp * 16 + g + 8 * r;
    const int64_t at = int64_t(h) * p.total_q + doc.q0 + i0 + i;
    lse2[r] = i < rows ? math::backward_lse(p.lse_in[at]) * kLog2e : INFINITY;
    dlt[r] = i < rows ? p.delta[at] : 0.f;
  }

  float acc[D / 8][4];
  zero(acc);

  const KvStream<T, D, kBn> kv{sK, sV, K, V, p.k_tok, p.v_tok, doc.sk, p.d};
  if (kb_begin < kb_end) {
    load_tile<kBm, D>(sQ, Q, p.q_tok, rows, p.d);
    load_tile<kBm, D>(sDO, DO, p.do_tok, rows, p.d);
    kv.load(kb_begin, 0);
    cp_async_commit();
  }
  for (int kb = kb_begin; kb < kb_end; ++kb) {
    const int buf = kv.advance(kb, kb_begin, kb_end), j0 = kb * kBn;
    const T* k_tile = sK + buf * kBn * kLd;
    const T* v_tile = sV + buf * kBn * kLd;

    // S = Q K^T and dP = dO V^T for this warp's 16 rows.
    float s[kBn / 8][4], dp[kBn / 8][4];
    zero(s);
    zero(dp);
    product_nt<T, D>(s, sQ, warp * 16, k_tile, 0, p.d);
    product_nt<T, D>(dp, sDO, warp * 16, v_tile, 0, p.d);
    // dS = P * (dP - delta) * cap'(x), P = exp2(x - lse); zero where masked.
    const int row0 = i0 + warp * 16 + g;
    const bool full = band.full(i0, i0 + kBm, j0, j0 + kBn);
#pragma unroll
    for (int n = 0; n < kBn / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float t;
        const float x = score_log2(s[n][e], p, &t);
        float pr = exp2f(x - lse2[e >> 1]);
        if (!full && !band.visible(row0 + 8 * (e >> 1), j0 + n * 8 + 2 * tq + (e & 1))) pr = 0.f;
        float ds = pr * (dp[n][e] - dlt[e >> 1]);
        if (p.softcap > 0.f) ds *= math::softcap_grad(t, 1.f);
        s[n][e] = ds;
      }
    }
    // dQ += dS K (dS rounded to T, K fragments by ldmatrix.trans); scaled by softmax_scale at the end.
    product_pv<T, D>(acc, s, k_tile, p.d);
    __syncthreads();
  }

  const float mul[2] = {p.scale, p.scale};
  store_tile(acc, DQ + int64_t(warp * 16) * p.hq * p.d, int64_t(p.hq) * p.d, rows - warp * 16, 0, p.d, mul);
}

// -------------------------------------------------------------------------------------------------- dK / dV

template <typename T, int D>
__global__ void __launch_bounds__(Tiles<D>::kBwdWarps * 32) attention_bwd_dkdv_kernel(const Params p) {
  using Tl = Tiles<D>;
  constexpr int kBn = Tl::kBwdBn, kBm = Tl::kBwdBm, kLd = Tl::kLd, kLdP = Tl::kBwdLdP;
  constexpr int kKeyWarps = kBn / 16, kSplit = Tl::kBwdWarps / kKeyWarps;  // warps along the keys x the rest
  constexpr int kWq = kBm / kSplit, kWd = D / kSplit;  // queries (phase A) / head-dim columns (phase B) per warp
  static_assert(kWq % 16 == 0 && kWd % 16 == 0, "dK/dV tiles: whole 16-wide fragments per warp");
  EK_DYNAMIC_SHARED(T, smem);
  T* sK = smem;                  // [kBn][kLd]
  T* sV = sK + kBn * kLd;        // [kBn][kLd]
  T* sQ = sV + kBn * kLd;        // [kBm][kLd]
  T* sDO = sQ + kBm * kLd;       // [kBm][kLd]
  T* sP = sDO + kBm * kLd;       // P^T  [kBn][kLdP]
  T* sDS = sP + kBn * kLdP;      // dS^T [kBn][kLdP]
  float* sLse = reinterpret_cast<float*>(sDS + kBn * kLdP);  // [kBm], log2 units
  float* sDelta = sLse + kBm;                                // [kBm]

  const DocSpan doc = doc_span(p, blockIdx.z);
  const int j0 = blockIdx.x * kBn, hkv = blockIdx.y;
  if (j0 >= doc.sk) return;
  const int keys = min(kBn, doc.sk - j0), group = p.hq / p.hk;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int wk = warp % kKeyWarps, ws = warp / kKeyWarps;  // key rows wk * 16, query / column slice ws
  const math::Band<int> band{doc.sq, doc.sk, p.left, p.right};

  const T* K = static_cast<const T*>(p.k) + int64_t(doc.k0 + j0) * p.k_tok + int64_t(hkv) * p.k_head;
  const T* V = static_cast<const T*>(p.v) + int64_t(doc.k0 + j0) * p.v_tok + int64_t(hkv) * p.v_head;
  T* DK = static_cast<T*>(p.dk) + int64_t(doc.k0 + j0) * p.hk * p.d + int64_t(hkv) * p.d;
  T* DV = static_cast<T*>(p.dv) + int64_t(doc.k0 + j0) * p.hk * p.d + int64_t(hkv) * p.d;

  int i_begin = 0, i_end = 0;
  const bool any = band.queries_of(j0, j0 + keys, &i_begin, &i_end);
  const int qb_begin = i_begin / kBm, qb_end = any ? (i_end - 1) / kBm + 1 : qb_begin;

  float dk[kWd / 8][4], dv[kWd / 8][4];
  zero(dk);
  zero(dv);

  if (qb_begin < qb_end) {
    load_tile<kBn, D>(sK, K, p.k_tok, keys, p.d);
    load_tile<kBn, D>(sV, V, p.v_tok, keys, p.d);
    cp_async_commit();
  }
  // Fixed order: q heads of the group, then query tiles — the sums below never depend on scheduling.
  for (int gi = 0; gi < group && qb_begin < qb_end; ++gi) {
    const int h = hkv * group + gi;
    for (int qb = qb_begin; qb < qb_end; ++qb) {
      const int i0 = qb * kBm, rows = min(kBm, doc.sq - i0);
      __syncthreads();  // the previous tile's phase B is done with sQ, sDO, sP, sDS
      load_tile<kBm, D>(sQ, static_cast<const T*>(p.q) + int64_t(doc.q0 + i0) * p.q_tok + int64_t(h) * p.q_head,
                        p.q_tok, rows, p.d);
      load_tile<kBm, D>(sDO,
                        static_cast<const T*>(p.dout) + int64_t(doc.q0 + i0) * p.do_tok + int64_t(h) * p.do_head,
                        p.do_tok, rows, p.d);
      cp_async_commit();
      for (int i = threadIdx.x; i < kBm; i += blockDim.x) {
        const int64_t at = int64_t(h) * p.total_q + doc.q0 + i0 + i;
        sLse[i] = i < rows ? math::backward_lse(p.lse_in[at]) * kLog2e : INFINITY;
        sDelta[i] = i < rows ? p.delta[at] : 0.f;
      }
      cp_async_wait<0>();
      __syncthreads();

      // Phase A: S^T = K Q^T and dP^T = V dO^T for key rows wk * 16 and queries ws * kWq; P^T, dS^T to shared.
      {
        float s[kWq / 8][4], dp[kWq / 8][4];
        zero(s);
        zero(dp);
        product_nt<T, D>(s, sK, wk * 16, sQ, ws * kWq, p.d);
        product_nt<T, D>(dp, sV, wk * 16, sDO, ws * kWq, p.d);
        const bool full = band.full(i0, i0 + kBm, j0, j0 + kBn);
        const int key0 = wk * 16 + g;  // this thread's key rows key0, key0 + 8 (tile-relative)
#pragma unroll
        for (int n = 0; n < kWq / 8; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = key0 + 8 * (e >> 1), qi = ws * kWq + n * 8 + 2 * tq + (e & 1);
            float t;
            const float x = score_log2(s[n][e], p, &t);
            float pr = exp2f(x - sLse[qi]);
            if (!full && !band.visible(i0 + qi, j0 + key)) pr = 0.f;
            float ds = pr * (dp[n][e] - sDelta[qi]);
            if (p.softcap > 0.f) ds *= math::softcap_grad(t, 1.f);
            s[n][e] = pr;
            dp[n][e] = ds;
          }
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int at = (key0 + 8 * r) * kLdP + ws * kWq + n * 8 + 2 * tq;
            *reinterpret_cast<uint32_t*>(sP + at) = pack2<T>(s[n][2 * r], s[n][2 * r + 1]);
            *reinterpret_cast<uint32_t*>(sDS + at) = pack2<T>(dp[n][2 * r], dp[n][2 * r + 1]);
          }
        }
      }
      __syncthreads();

      // Phase B: dV += P^T dO, dK += dS^T Q for key rows wk * 16 and head-dim columns ws * kWd.
#pragma unroll
      for (int kk = 0; kk < kBm / 16; ++kk) {
        uint32_t ap[4], ads[4];
        load_a(ap, sP, kLdP, wk * 16, kk * 16);
        load_a(ads, sDS, kLdP, wk * 16, kk * 16);
#pragma unroll
        for (int n2 = 0; n2 < kWd / 16; ++n2) {
          if (ws * kWd + n2 * 16 >= p.d) break;
          uint32_t b[4];
          load_b_kn(b, sDO, kLd, kk * 16, ws * kWd + n2 * 16);
          mma2<T>(dv[2 * n2], dv[2 * n2 + 1], ap, b);
          load_b_kn(b, sQ, kLd, kk * 16, ws * kWd + n2 * 16);
          mma2<T>(dk[2 * n2], dk[2 * n2 + 1], ads, b);
        }
      }
    }
  }

  // Every key row of the tile is written (zeros for keys no query sees).
  const int64_t ld = int64_t(p.hk) * p.d;
  const float mul_k[2] = {p.scale, p.scale}, mul_v[2] = {1.f, 1.f};
  store_tile(dk, DK + wk * 16 * ld, ld, keys - wk * 16, ws * kWd, p.d, mul_k);
  store_tile(dv, DV + wk * 16 * ld, ld, keys - wk * 16, ws * kWd, p.d, mul_v);
}

// ------------------------------------------------------------------------------------------------- launchers

// Raises the kernel's dynamic shared-memory limit past the default 48 KB when it needs more (the launch's check
// reports a refusal, as for any launch error).
template <auto Kernel>
inline void launch_with_smem(dim3 grid, int threads, size_t smem, cudaStream_t stream, const Params& p) {
  if (smem > 48 * 1024) cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  cuda::launch<Kernel>(grid, threads, smem, stream, p);
}

template <typename T, int D>
void run_forward(const Params& p, cudaStream_t stream) {
  using Tl = Tiles<D>;
  const dim3 grid(unsigned((p.max_sq + Tl::kBm - 1) / Tl::kBm), unsigned(p.hq), unsigned(p.n_docs));
  launch_with_smem<attention_fwd_kernel<T, D>>(grid, Tl::kWarps * 32, Tl::fwd_smem(sizeof(T)), stream, p);
}

// After the delta pre-pass (attention.cu).
template <typename T, int D>
void run_backward(const Params& p, cudaStream_t stream) {
  using Tl = Tiles<D>;
  if (p.max_sk > 0) {
    const dim3 grid(unsigned((p.max_sk + Tl::kBwdBn - 1) / Tl::kBwdBn), unsigned(p.hk), unsigned(p.n_docs));
    launch_with_smem<attention_bwd_dkdv_kernel<T, D>>(grid, Tl::kBwdWarps * 32, Tl::dkdv_smem(sizeof(T)), stream,
                                                      p);
  }
  if (p.max_sq > 0) {
    const dim3 grid(unsigned((p.max_sq + Tl::kBm - 1) / Tl::kBm), unsigned(p.hq), unsigned(p.n_docs));
    launch_with_smem<attention_bwd_dq_kernel<T, D>>(grid, Tl::kWarps * 32, Tl::dq_smem(sizeof(T)), stream, p);
  }
}

// One explicit instantiation per (head-dim class, dtype), each in its own file under attention/inst/.
#define EK_ATTENTION_INSTANTIATE(T, D)                                   \
  template void run_forward<T, D>(const Params&, cudaStream_t);          \
  template void run_backward<T, D>(const Params&, cudaStream_t);

}  // namespace eurokernels::attention
