// acc += part, or out = round(acc + part): the fp32 accumulation of linear_cross_entropy's weight gradient over
// token chunks (grad_in_forward; eurokernels/ops/linear_cross_entropy.py). Each chunk's share comes from a matmul
// in the weight's dtype; torch's acc.add_(part) would convert part to an fp32 temporary and add in a second pass,
// and the last chunk would be followed by one more pass rounding acc to the weight's dtype. One pass each here.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "common.h"
#include "cpu_vec.h"
#include "cross_entropy/cross_entropy.h"

namespace eurokernels::cross_entropy {

void accumulate_cpu(at::Tensor& acc, const at::Tensor& part, const std::optional<at::Tensor>& out) {
  CHECK_DEVICE(acc, at::kCPU);
  CHECK_DEVICE(part, at::kCPU);
  CHECK_DTYPE(acc, at::kFloat);
  CHECK_CONTIGUOUS(acc);
  CHECK_CONTIGUOUS(part);
  CHECK_SAME_SHAPE(acc, part);
  if (out) {
    CHECK_DEVICE(*out, at::kCPU);
    CHECK_CONTIGUOUS(*out);
    CHECK_SAME_SHAPE(*out, part);
    CHECK_DTYPE(*out, part.scalar_type());
  }
  const int64_t n = acc.numel();
  EK_DISPATCH_FLOAT_TYPES(part.scalar_type(), "accumulate_cpu", [&] {
    float* a = acc.data_ptr<float>();
    const scalar_t* p = part.const_data_ptr<scalar_t>();
    scalar_t* o = out ? static_cast<scalar_t*>(out->data_ptr()) : nullptr;
    at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
      int64_t i = begin;
      for (; i + cpu::kStep <= end; i += cpu::kStep) {
        auto [pa, pb] = cpu::load2(p + i);
        const cpu::Vec sa = cpu::Vec::loadu(a + i) + pa, sb = cpu::Vec::loadu(a + i + cpu::Vec::size()) + pb;
        if (o) {
          cpu::store2(o + i, sa, sb);
        } else {
          sa.store(a + i);
          sb.store(a + i + cpu::Vec::size());
        }
      }
      for (; i < end; ++i) {
        const float s = a[i] + static_cast<float>(p[i]);
        if (o) {
          o[i] = static_cast<scalar_t>(s);
        } else {
          a[i] = s;
        }
      }
    });
  });
}

}  // namespace eurokernels::cross_entropy
