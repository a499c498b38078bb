// Attention CUDA entry points: validate, allocate, and launch on the current stream (same contract as the CPU
// ones in attention.h). Compiled by g++ (torch headers here, not in the .cu files, keeps nvcc fast).
#include <limits>

#include "attention/attention.h"
#include "attention/attention_launch.h"
#include "common.h"
#include "cuda_utils_host.h"

namespace eurokernels::attention {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// [tokens, heads, d] on the kernels' device, unit stride along d, float16 / bfloat16 (the tensor cores' inputs;
// the Python op refuses float32 for this backend with the same message).
void check_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().type() == cuda::kDeviceType, name, " must be on ", cuda::kDeviceType, ", got ", t.device());
  TORCH_CHECK(t.dim() == 3, name, " must be [tokens, heads, head_dim], got ", t.sizes());
  TORCH_CHECK(t.size(2) <= 1 || t.stride(2) == 1, name, " must be contiguous in its last dimension");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16, name,
                   " must be float16 or bfloat16 for the cuda attention kernels, got ", t.scalar_type());
}

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_input(q, "q");
  check_input(k, "k");
  check_input(v, "v");
  cuda::check_same_device(q, "q", {{&k, "k"}, {&v, "v"}});
  CHECK_DTYPE(k, q.scalar_type());
  CHECK_DTYPE(v, q.scalar_type());
  CHECK_SAME_SHAPE(k, v);
  TORCH_CHECK(k.size(2) == q.size(2) && q.size(2) % 8 == 0 && q.size(2) > 0 && q.size(2) <= 256,
              "head_dim must match and be a multiple of 8 <= 256, got ", q.size(2));
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, "q heads must be a multiple of k heads");
  TORCH_CHECK(q.size(1) <= 65535, "at most 65535 q heads (the grid's y dimension), got ", q.size(1));
}

void check_cu(const at::Tensor& cu_q, const at::Tensor& cu_k, const at::Tensor& q, int64_t max_sq, int64_t max_sk) {
  for (const auto& [t, name] : {std::pair{&cu_q, "cu_seqlens_q"}, std::pair{&cu_k, "cu_seqlens_k"}}) {
    TORCH_CHECK(t->device() == q.device(), name, " must be on q's device ", q.device(), ", got ", t->device());
    TORCH_CHECK(t->scalar_type() == at::kInt && t->dim() == 1 && t->is_contiguous(), name,
                " must be a contiguous 1-D int32 tensor");
  }
  TORCH_CHECK(cu_q.size(0) == cu_k.size(0) && cu_q.size(0) >= 1, "cu_seqlens_q/k must have equal lengths >= 1");
  TORCH_CHECK(cu_q.size(0) - 1 <= 65535, "at most 65535 documents (the grid's z dimension), got ", cu_q.size(0) - 1);
  TORCH_CHECK(max_sq >= 0 && max_sk >= 0 && max_sq < (int64_t(1) << 31) && max_sk < (int64_t(1) << 31),
              "max_seqlen_q/k must be in [0, 2^31)");
}

// cp.async moves 16 bytes: the data pointer and the token / head strides must be multiples of 16 bytes. A view
// that is not (a slice at an odd offset, a stride that is not a multiple of 8 elements) is copied into a fresh
// contiguous tensor, whose allocation is aligned: correctness first, at the price of one copy of that input.
at::Tensor aligned(const at::Tensor& t) {
  const int64_t e = 16 / t.element_size();
  const bool ok = reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0 && t.stride(0) % e == 0 &&
                  t.stride(1) % e == 0;
  if (ok) return t;
  at::Tensor c = at::empty(t.sizes(), t.options());
  c.copy_(t);
  return c;
}

Params make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_q,
                   const at::Tensor& cu_k, int64_t max_sq, int64_t max_sk, double scale, int64_t left,
                   int64_t right, double softcap) {
  Params p{};
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  p.cu_q = cu_q.const_data_ptr<int32_t>();
  p.cu_k = cu_k.const_data_ptr<int32_t>();
  p.q_tok = q.stride(0);
  p.q_head = q.stride(1);
  p.k_tok = k.stride(0);
  p.k_head = k.stride(1);
  p.v_tok = v.stride(0);
  p.v_head = v.stride(1);
  p.total_q = q.size(0);
  p.n_docs = int(cu_q.size(0) - 1);
  p.hq = int(q.size(1));
  p.hk = int(k.size(1));
  p.d = int(q.size(2));
  p.max_sq = int(max_sq);
  p.max_sk = int(max_sk);
  p.left = int(std::min<int64_t>(left, std::numeric_limits<int>::max()));
  p.right = int(std::min<int64_t>(right, std::numeric_limits<int>::max()));
  p.scale = float(scale);
  p.softcap = float(softcap);
  p.dtype = cuda::dtype_of(q);
  return p;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                const at::Tensor& v_in, const at::Tensor& cu_seqlens_q,
                                                const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                                                int64_t max_seqlen_k, double softmax_scale, int64_t window_left,
                                                int64_t window_right, double softcap) {
  check_qkv(q_in, k_in, v_in);
  check_cu(cu_seqlens_q, cu_seqlens_k, q_in, max_seqlen_q, max_seqlen_k);
  const cuda::DeviceGuard guard(q_in.device());
  const at::Tensor q = aligned(q_in), k = aligned(k_in), v = aligned(v_in);
  // Zeros, not empty: rows outside every document must read 0, and whether the documents cover every row is only
  // known from cu_seqlens, which lives on the device (no host sync).
  at::Tensor out = at::zeros(q.sizes(), q.options());
  at::Tensor lse = at::full({q.size(1), q.size(0)}, -kInf, q.options().dtype(at::kFloat));
  Params p = make_params(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                         window_left, window_right, softcap);
  p.out = out.mutable_data_ptr();
  p.lse = lse.mutable_data_ptr<float>();
  launch_forward(p, cuda::current_stream());
  cuda::check_launch();
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse, const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k,
    int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale, int64_t window_left, int64_t window_right,
    double softcap) {
  check_qkv(q_in, k_in, v_in);
  check_input(dout_in, "dout");
  check_input(out_in, "out");
  cuda::check_same_device(q_in, "q", {{&dout_in, "dout"}, {&out_in, "out"}, {&lse, "lse"}});
  CHECK_SAME_SHAPE(dout_in, q_in);
  CHECK_SAME_SHAPE(out_in, q_in);
  CHECK_DTYPE(dout_in, q_in.scalar_type());
  CHECK_DTYPE(out_in, q_in.scalar_type());
  CHECK_DTYPE(lse, at::kFloat);
  CHECK_CONTIGUOUS(lse);
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == q_in.size(1) && lse.size(1) == q_in.size(0),
              "lse must be [hq, total_q]");
  check_cu(cu_seqlens_q, cu_seqlens_k, q_in, max_seqlen_q, max_seqlen_k);
  const cuda::DeviceGuard guard(q_in.device());
  const at::Tensor q = aligned(q_in), k = aligned(k_in), v = aligned(v_in), dout = aligned(dout_in),
                   out = aligned(out_in);
  // Zeros for the rows outside every document (see forward_cuda); the kernels write every row inside one.
  at::Tensor dq = at::zeros(q.sizes(), q.options()), dk = at::zeros(k.sizes(), k.options()),
             dv = at::zeros(v.sizes(), v.options());
  at::Tensor delta = at::empty({q.size(1), q.size(0)}, q.options().dtype(at::kFloat));
  Params p = make_params(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                         window_left, window_right, softcap);
  p.dout = dout.const_data_ptr();
  p.o = out.const_data_ptr();
  p.do_tok = dout.stride(0);
  p.do_head = dout.stride(1);
  p.o_tok = out.stride(0);
  p.o_head = out.stride(1);
  p.lse_in = lse.const_data_ptr<float>();
  p.delta = delta.mutable_data_ptr<float>();
  p.dq = dq.mutable_data_ptr();
  p.dk = dk.mutable_data_ptr();
  p.dv = dv.mutable_data_ptr();
  launch_backward(p, cuda::current_stream());
  cuda::check_launch();
  return {dq, dk, dv};
}

}  // namespace eurokernels::attention
