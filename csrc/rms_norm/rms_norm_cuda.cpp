// RMSNorm CUDA entry points: validate, allocate, and launch on the current stream. Compiled by g++ (torch
// headers here, not in the .cu, keeps nvcc fast).
#include <cmath>

#include "common.h"
#include "cuda_utils_host.h"
#include "rms_norm/rms_norm.h"
#include "rms_norm/rms_norm_common.h"
#include "rms_norm/rms_norm_launch.h"

namespace eurokernels::rms_norm {

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                            const std::optional<at::Tensor>& residual, double eps,
                                                            double offset, int64_t casting) {
  cuda::check_same_device(x, "x", {{cuda::maybe(weight), "weight"},
                                   {cuda::maybe(residual), "residual"}});
  CHECK_DIM(x, 2);
  CHECK_LASTDIM_CONTIGUOUS(x);
  const cuda::DeviceGuard guard(x.device());
  const int64_t rows = x.size(0), n = x.size(1);
  if (residual) {
    CHECK_SAME_SHAPE(*residual, x);
    CHECK_DTYPE(*residual, x.scalar_type());
    CHECK_LASTDIM_CONTIGUOUS(*residual);
  }
  at::Tensor w = weight ? weight->contiguous() : at::Tensor();
  if (weight) TORCH_CHECK(w.dim() == 1 && w.size(0) == n, "weight must be [", n, "]");
  TORCH_CHECK(casting >= kLlama && casting <= kNone, "unknown casting mode ", casting);
  at::Tensor y = at::empty({rows, n}, x.options());
  at::Tensor res_out = residual ? at::empty({rows, n}, x.options()) : at::empty({0}, x.options());
  at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  // No kernel runs: rstd of an empty row is 1 / sqrt(eps), as the CPU entry point gives.
  if (rows == 0 || n == 0) return {y, res_out, rstd.fill_(1.f / std::sqrt(static_cast<float>(eps)))};

  ForwardParams p{};
  p.x = x.const_data_ptr();
  p.residual = residual ? residual->const_data_ptr() : nullptr;
  p.weight = weight ? w.const_data_ptr() : nullptr;
  p.y = y.mutable_data_ptr();
  p.residual_out = residual ? res_out.mutable_data_ptr() : nullptr;
  p.rstd = rstd.mutable_data_ptr<float>();
  p.rows = rows;
  p.n = n;
  p.stride_x = x.stride(0);
  p.stride_r = residual ? residual->stride(0) : 0;
  p.eps = static_cast<float>(eps);
  p.offset = static_cast<float>(offset);
  p.casting = static_cast<int>(casting);
  p.x_dtype = cuda::dtype_of(x);
  p.w_dtype = weight ? cuda::dtype_of(w) : p.x_dtype;
  launch_forward(p, cuda::current_stream());
  cuda::check_launch();
  return {y, res_out, rstd};
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& dy, const at::Tensor& h,
                                                 const std::optional<at::Tensor>& weight, const at::Tensor& rstd,
                                                 const std::optional<at::Tensor>& dresidual_out, double offset) {
  cuda::check_same_device(h, "h", {{&dy, "dy"}, {&rstd, "rstd"}, {cuda::maybe(weight), "weight"},
                                   {cuda::maybe(dresidual_out), "dresidual_out"}});
  CHECK_DIM(h, 2);
  CHECK_SAME_SHAPE(dy, h);
  CHECK_DTYPE(dy, h.scalar_type());
  CHECK_LASTDIM_CONTIGUOUS(dy);
  CHECK_LASTDIM_CONTIGUOUS(h);
  CHECK_DTYPE(rstd, at::kFloat);
  CHECK_CONTIGUOUS(rstd);
  TORCH_CHECK(rstd.numel() == h.size(0), "rstd must have ", h.size(0), " elements");
  if (weight) TORCH_CHECK(weight->dim() == 1 && weight->size(0) == h.size(1), "weight must be [", h.size(1), "]");
  if (dresidual_out) {
    CHECK_SAME_SHAPE(*dresidual_out, h);
    CHECK_DTYPE(*dresidual_out, h.scalar_type());
    CHECK_LASTDIM_CONTIGUOUS(*dresidual_out);
  }
  const cuda::DeviceGuard guard(h.device());
  const int64_t rows = h.size(0), n = h.size(1);
  at::Tensor w = weight ? weight->contiguous() : at::Tensor();
  // Two blocks per SM keep every SM busy while bounding the dw scratch to 2 * SMs rows.
  const int sms = cuda::sm_count(h.device().index());
  const int blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(rows, 2 * sms)));
  at::Tensor dx = at::empty({rows, n}, h.options());
  at::Tensor partial = weight ? at::zeros({blocks, n}, h.options().dtype(at::kFloat)) : at::Tensor();
  at::Tensor dw = weight ? at::empty({n}, h.options().dtype(at::kFloat)) : at::empty({0}, h.options());

  BackwardParams p{};
  p.dy = dy.const_data_ptr();
  p.h = h.const_data_ptr();
  p.weight = weight ? w.const_data_ptr() : nullptr;
  p.rstd = rstd.const_data_ptr<float>();
  p.dres = dresidual_out ? dresidual_out->const_data_ptr() : nullptr;
  p.dx = dx.mutable_data_ptr();
  p.dw_partial = weight ? partial.mutable_data_ptr<float>() : nullptr;
  p.dw = weight ? dw.mutable_data_ptr<float>() : nullptr;
  p.rows = rows;
  p.n = n;
  p.stride_dy = dy.stride(0);
  p.stride_h = h.stride(0);
  p.stride_dres = dresidual_out ? dresidual_out->stride(0) : 0;
  p.offset = static_cast<float>(offset);
  p.x_dtype = cuda::dtype_of(h);
  p.w_dtype = weight ? cuda::dtype_of(w) : p.x_dtype;
  p.blocks = blocks;
  launch_backward(p, cuda::current_stream());
  cuda::check_launch();
  return {dx, weight ? dw.to(weight->scalar_type()) : dw};
}

}  // namespace eurokernels::rms_norm
