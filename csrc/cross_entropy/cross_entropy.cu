// Cross-entropy CUDA kernel: one block per row, 128-bit loads where the row allows. Forward: an online softmax
// (online_softmax.cuh) where each thread takes VEC elements at a time (one rescale of its running sum per VEC
// elements, so about one exp2 per element), then (max, sum) pairs are merged across the block. With a gradient
// requested, a second sweep over the same row (an L2 hit for the row just read) writes it; in backward mode (lse
// given) only that sweep runs. The row math is cross_entropy_common.h, shared with the CPU kernel. In place
// (grad == x) is safe: each thread reads its elements before writing the same ones, and the one element read by
// another thread (the target logit, by thread 0) is read before the block's last barrier.
#include "cross_entropy/cross_entropy_common.h"
#include "cross_entropy/cross_entropy_launch.h"
#include "cuda_utils.cuh"
#include "online_softmax.cuh"

namespace eurokernels::cross_entropy {
namespace {

using namespace eurokernels::cuda;

template <typename T, int VEC>
__global__ void cross_entropy_kernel(Params p) {
  __shared__ float scratch[96];
  const Options& o = p.opts;
  const bool smoothing = o.label_smoothing != 0.f;
  // One block per row; blocks step by gridDim.x, so more rows than the grid holds also work (grid_rows).
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const T* x = static_cast<const T*>(p.x) + row * p.stride_x;
    const Target t = classify(p.labels[row], p.n, o);

    float lse;
    if (p.lse_in) {
      lse = p.lse_in[row];
    } else {
      float m = -INFINITY, s = 0.f, sz = 0.f;
      for (int64_t i = int64_t(threadIdx.x) * VEC; i < p.n; i += int64_t(blockDim.x) * VEC) {
        float v[VEC];
        load_f32<T, VEC>(x + i, v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          v[k] = soft_cap(v[k], o.softcap);
          if (smoothing) sz += v[k];
        }
        online_add(m, s, v);
      }
      // The target logit, read before the merge's barriers: with the gradient written in place (grad == x), the
      // thread owning that column may overwrite it as soon as the last barrier lets it through.
      const float zt = threadIdx.x == 0 && t.in_shard ? soft_cap(to_float(x[t.local]), o.softcap) : 0.f;
      block_online_merge(m, s, sz, scratch);  // ends with a barrier: scratch is free for the next row
      lse = online_lse(m, s);
      if (threadIdx.x == 0) {
        p.loss[row] = row_loss(lse, zt, sz, t, o);
        p.lse[row] = lse;
      }
    }
    if (!p.grad) continue;

    const GradCoef c = grad_coef(p.row_scale[row], p.dlse ? p.dlse[row] : 0.f, lse, t, o);
    T* g = static_cast<T*>(p.grad) + row * p.stride_g;
    const int64_t target = t.in_shard ? t.local : -1;
    for (int64_t i = int64_t(threadIdx.x) * VEC; i < p.n; i += int64_t(blockDim.x) * VEC) {
      float v[VEC];
      load_f32<T, VEC>(x + i, v);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float th = o.softcap == 0.f ? 0.f : tanhf(v[k] / o.softcap);
        const float z = o.softcap == 0.f ? v[k] : o.softcap * th;
        float d = c.p * exp_diff(z - lse) - c.u - (i + k == target ? c.t : 0.f);
        v[k] = o.softcap == 0.f ? d : d * (1.f - th * th);
      }
      store_f32<T, VEC>(g + i, v);
    }
    // In place, the next row's reads and this row's writes are disjoint (other rows): no barrier needed here.
  }
}

}  // namespace

void launch(const Params& p, cudaStream_t stream) {
  if (p.rows == 0 || p.n == 0) return;
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    const int vec = pick_vec<T>({p.n, p.stride_x, p.grad ? p.stride_g : 0}, {p.x, p.grad});
    // At most 512 threads: several blocks per SM on long rows.
    const int threads = row_threads(p.n, vec, 512);
    dispatch_vec<T>(vec, [&](auto v) {
      cuda::launch<cross_entropy_kernel<T, decltype(v)::value>>(grid_rows(p.rows), unsigned(threads), 0, stream, p);
    });
  });
}

}  // namespace eurokernels::cross_entropy
