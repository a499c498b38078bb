// Attention CUDA launchers: the backward's row-sum pre-pass, and the switch from (dtype, head dim) to the compiled
// (T, head-dim class) instantiations of attention_kernels.cuh (each built in its own file under inst/).
#include "attention/attention_kernels.cuh"

namespace eurokernels::attention {

#define EK_ATTENTION_EXTERN(T, D)                                          \
  extern template void run_forward<T, D>(const Params&, cudaStream_t);     \
  extern template void run_backward<T, D>(const Params&, cudaStream_t);
EK_ATTENTION_EXTERN(__half, 64)
EK_ATTENTION_EXTERN(__half, 128)
EK_ATTENTION_EXTERN(__half, 256)
EK_ATTENTION_EXTERN(__nv_bfloat16, 64)
EK_ATTENTION_EXTERN(__nv_bfloat16, 128)
EK_ATTENTION_EXTERN(__nv_bfloat16, 256)
#undef EK_ATTENTION_EXTERN

namespace {

constexpr int kDeltaWarps = 8;

// delta[h, i] = sum_c dO[i, h, c] * O[i, h, c] in fp32, one warp per (token, head).
template <typename T>
__global__ void __launch_bounds__(kDeltaWarps * 32) attention_bwd_delta_kernel(const Params p) {
  const int64_t rows = p.total_q * p.hq;
  const int lane = threadIdx.x & 31;
  for (int64_t row = int64_t(blockIdx.x) * kDeltaWarps + (threadIdx.x >> 5); row < rows;
       row += int64_t(gridDim.x) * kDeltaWarps) {
    const int64_t i = row / p.hq, h = row % p.hq;
    const T* o = static_cast<const T*>(p.o) + i * p.o_tok + h * p.o_head;
    const T* d = static_cast<const T*>(p.dout) + i * p.do_tok + h * p.do_head;
    float acc = 0.f;
    for (int c = lane * 8; c < p.d; c += 32 * 8) {  // d is a multiple of 8; rows are 16-byte aligned
      float ov[8], dv[8];
      load_f32<T, 8>(o + c, ov);
      load_f32<T, 8>(d + c, dv);
#pragma unroll
      for (int k = 0; k < 8; ++k) acc += ov[k] * dv[k];
    }
    acc = warp_sum(acc);
    if (lane == 0) p.delta[h * p.total_q + i] = acc;
  }
}

template <typename F>
void dispatch_head_dim(int d, F&& f) {
  switch (head_dim_class(d)) {
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: return f(std::integral_constant<int, 256>{});
  }
}

}  // namespace

int head_dim_class(int d) { return d <= 64 ? 64 : d <= 128 ? 128 : 256; }

int64_t dynamic_smem(const char* kernel, int head_dim_class, int elem_bytes) {
  int64_t bytes = 0;
  dispatch_head_dim(head_dim_class, [&](auto dc) {
    using Tl = Tiles<decltype(dc)::value>;
    if (std::strcmp(kernel, "attention_fwd_kernel") == 0) bytes = int64_t(Tl::fwd_smem(elem_bytes));
    if (std::strcmp(kernel, "attention_bwd_dq_kernel") == 0) bytes = int64_t(Tl::dq_smem(elem_bytes));
    if (std::strcmp(kernel, "attention_bwd_dkdv_kernel") == 0) bytes = int64_t(Tl::dkdv_smem(elem_bytes));
  });
  return bytes;
}

void launch_forward(const Params& p, cudaStream_t stream) {
  if (p.max_sq == 0 || p.n_docs == 0) return;
  dispatch_dtype(p.dtype, [&](auto t) {
    using T = decltype(t);
    if constexpr (!std::is_same_v<T, float>) {
      dispatch_head_dim(p.d, [&](auto dc) { run_forward<T, decltype(dc)::value>(p, stream); });
    }
  });
}

void launch_backward(const Params& p, cudaStream_t stream) {
  if (p.n_docs == 0) return;
  dispatch_dtype(p.dtype, [&](auto t) {
    using T = decltype(t);
    if constexpr (!std::is_same_v<T, float>) {
      const int64_t rows = p.total_q * p.hq;
      if (rows > 0) {
        const int64_t blocks = std::min<int64_t>((rows + kDeltaWarps - 1) / kDeltaWarps, grid_limit_x());
        cuda::launch<attention_bwd_delta_kernel<T>>(unsigned(blocks), kDeltaWarps * 32, 0, stream, p);
      }
      dispatch_head_dim(p.d, [&](auto dc) { run_backward<T, decltype(dc)::value>(p, stream); });
    }
  });
}

}  // namespace eurokernels::attention
