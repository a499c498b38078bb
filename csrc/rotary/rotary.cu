// Rotary embeddings on CUDA: one block per token rotates all of that token's q and k heads (GQA head counts may
// differ), each thread VEC features at a time with 128-bit accesses when head_dim, rotary_dim / 2, the strides
// and the pointers allow. The cos/sin row of the token is read with scalar loads: it is shared by every head and
// stays in L1, while q and k are the traffic. Backward = the same kernel with conjugate set (sin negated).
#include <algorithm>

#include "cuda_utils.cuh"
#include "rotary/rotary_common.h"
#include "rotary/rotary_launch.h"

namespace eurokernels::rotary {
namespace {

using namespace eurokernels::cuda;

// T: q/k storage type; C: table storage type; VEC: elements per access (NeoX: VEC pairs, i.e. VEC elements from
// each half; GPT-J: VEC consecutive elements, i.e. VEC / 2 pairs, or one pair as two scalar accesses for VEC 1).
template <typename T, typename C, int VEC, bool INTERLEAVED>
__global__ void rotary_kernel(Params p) {
  const int64_t t = blockIdx.x;
  const int64_t b = t / p.seqlen, s = t % p.seqlen;
  const int64_t pos = token_position(t, s, p.pos, p.cu, p.n_seqs, p.n_positions);
  const C* cos_row = static_cast<const C*>(p.cos) + (pos < 0 ? 0 : pos) * p.half;
  const C* sin_row = static_cast<const C*>(p.sin) + (pos < 0 ? 0 : pos) * p.half;
  const float nan = __int_as_float(0x7fc00000);
  const float sign = p.conjugate ? -1.f : 1.f;
  const int64_t heads = p.n_q_heads + p.n_k_heads;

  auto rows = [&](int64_t head, const T*& x, T*& o) {
    if (head < p.n_q_heads) {
      x = static_cast<const T*>(p.q) + b * p.sq[0] + s * p.sq[1] + head * p.sq[2];
      o = static_cast<T*>(p.q_out) + b * p.sqo[0] + s * p.sqo[1] + head * p.sqo[2];
    } else {
      head -= p.n_q_heads;
      x = static_cast<const T*>(p.k) + b * p.sk[0] + s * p.sk[1] + head * p.sk[2];
      o = static_cast<T*>(p.k_out) + b * p.sko[0] + s * p.sko[1] + head * p.sko[2];
    }
  };

  constexpr int PAIRS = INTERLEAVED ? (VEC < 2 ? 1 : VEC / 2) : VEC;  // pairs per work item
  const int64_t chunks = p.half / PAIRS;
  for (int64_t i = threadIdx.x; i < heads * chunks; i += blockDim.x) {
    const int64_t head = i / chunks, j = (i % chunks) * PAIRS;  // first pair of this item
    const T* x;
    T* o;
    rows(head, x, o);
    float c[PAIRS], sn[PAIRS];
#pragma unroll
    for (int e = 0; e < PAIRS; ++e) {
      c[e] = pos < 0 ? nan : to_float(cos_row[j + e]);
      sn[e] = pos < 0 ? nan : sign * to_float(sin_row[j + e]);
    }
    if constexpr (INTERLEAVED) {
      constexpr int E = 2 * PAIRS;
      float v[E];
      if constexpr (VEC >= 2) {
        load_f32<T, E>(x + 2 * j, v);
      } else {
        v[0] = to_float(x[2 * j]);
        v[1] = to_float(x[2 * j + 1]);
      }
#pragma unroll
      for (int e = 0; e < PAIRS; ++e) rotate_pair(v[2 * e], v[2 * e + 1], c[e], sn[e], v[2 * e], v[2 * e + 1]);
      if constexpr (VEC >= 2) {
        store_f32<T, E>(o + 2 * j, v);
      } else {
        o[2 * j] = from_float<T>(v[0]);
        o[2 * j + 1] = from_float<T>(v[1]);
      }
    } else {
      float x1[VEC], x2[VEC];
      load_f32<T, VEC>(x + j, x1);
      load_f32<T, VEC>(x + p.half + j, x2);
#pragma unroll
      for (int e = 0; e < VEC; ++e) rotate_pair(x1[e], x2[e], c[e], sn[e], x1[e], x2[e]);
      store_f32<T, VEC>(o + j, x1);
      store_f32<T, VEC>(o + p.half + j, x2);
    }
  }
  if (p.copy_pass) {  // features past rotary_dim, VEC at a time, copied as stored
    const int64_t rd = 2 * p.half, pass_chunks = (p.head_dim - rd) / VEC;
    for (int64_t i = threadIdx.x; i < heads * pass_chunks; i += blockDim.x) {
      const T* x;
      T* o;
      rows(i / pass_chunks, x, o);
      const int64_t j = rd + (i % pass_chunks) * VEC;
      *reinterpret_cast<Pack<T, VEC>*>(o + j) = *reinterpret_cast<const Pack<T, VEC>*>(x + j);
    }
  }
}

// The widest access (up to 16 bytes) that divides every offset a work item starts at (the lengths and all twelve
// strides) and every pointer.
template <typename T>
int pick_vec(const Params& p) {
  return cuda::pick_vec<T>({p.half * (p.interleaved ? 2 : 1), p.head_dim, p.sq[0], p.sq[1], p.sq[2], p.sk[0],
                            p.sk[1], p.sk[2], p.sqo[0], p.sqo[1], p.sqo[2], p.sko[0], p.sko[1], p.sko[2]},
                           {p.q, p.k, p.q_out, p.k_out});
}

template <typename T>
void launch_typed(const Params& p, cudaStream_t stream) {
  const int vec = pick_vec<T>(p);
  const int64_t items = (p.n_q_heads + p.n_k_heads) * p.half / (p.interleaved ? std::max(vec / 2, 1) : vec);
  const int threads = int(std::min<int64_t>(256, std::max<int64_t>(32, (items + 31) / 32 * 32)));
  const unsigned blocks = unsigned(p.batch * p.seqlen);
  auto go = [&](auto c) {
    using C = decltype(c);
    dispatch_vec<T>(vec, [&](auto v) {
      constexpr int V = decltype(v)::value;
      if (p.interleaved) {
        cuda::launch<rotary_kernel<T, C, V, true>>(blocks, threads, 0, stream, p);
      } else {
        cuda::launch<rotary_kernel<T, C, V, false>>(blocks, threads, 0, stream, p);
      }
    });
  };
  if (p.table_fp32) go(float{}); else go(T{});
}

}  // namespace

void launch(const Params& p, cudaStream_t stream) {
  if (p.batch * p.seqlen == 0) return;
  dispatch_dtype(p.dtype, [&](auto t) { launch_typed<decltype(t)>(p, stream); });
}

}  // namespace eurokernels::rotary
