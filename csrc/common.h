// Shared C++ helpers: the one CHECK_* macro family around TORCH_CHECK, used by every op's entry points.
// The public Python wrappers validate user arguments and name them; these checks guard the internal contract
// (a wrong call from our own Python code must fail loudly, never read out of bounds).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#define CHECK_DEVICE(x, dev) TORCH_CHECK((x).device().type() == (dev), #x " must be on ", (dev), ", got ", (x).device())
#define CHECK_LASTDIM_CONTIGUOUS(x) \
  TORCH_CHECK((x).size(-1) <= 1 || (x).stride(-1) == 1, #x " must be contiguous in its last dimension")
#define CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define CHECK_DIM(x, d) TORCH_CHECK((x).dim() == (d), #x " must have ", (d), " dimensions, got ", (x).dim())
#define CHECK_DTYPE(x, t) TORCH_CHECK((x).scalar_type() == (t), #x " must be ", (t), ", got ", (x).scalar_type())
#define CHECK_SAME_SHAPE(x, y) TORCH_CHECK((x).sizes() == (y).sizes(), #x " and " #y " must have the same shape")

namespace eurokernels {
// t is [rows, n] with a unit stride along n (the row views every row kernel takes).
inline void check_rows(const at::Tensor& t, const char* name, int64_t rows, int64_t n) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == n, name, " must be [", rows, ", ", n, "], got ",
              t.sizes());
  TORCH_CHECK(n <= 1 || t.stride(1) == 1, name, " must be contiguous along its last dimension");
}
}  // namespace eurokernels

// The storage dtypes our kernels accept (fp64 goes through the reference backend).
#define EK_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...)                 \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                 \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)    \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))
