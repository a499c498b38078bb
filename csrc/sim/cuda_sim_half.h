// __half and __nv_bfloat16 for the simulation build (<cuda_fp16.h> / <cuda_bf16.h>): the storage types and the
// conversions our kernels call, bit-exact with the device: fp32 -> 16-bit rounds to nearest even (the `_rn`
// intrinsics), overflow gives inf, NaN stays NaN; 16-bit -> fp32 is exact. No arithmetic operators, as in the GPU
// build (torch compiles with __CUDA_NO_HALF_OPERATORS__): kernels convert to fp32 and back.
#pragma once
#include <cstdint>
#include <cstring>

struct __half {
  uint16_t __x;
};
struct __nv_bfloat16 {
  uint16_t __x;
};

namespace eurokernels::sim {
inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace eurokernels::sim

inline float __half2float(__half h) {
  using namespace eurokernels::sim;
  const uint32_t sign = uint32_t(h.__x & 0x8000u) << 16, exp = (h.__x >> 10) & 0x1fu, mant = h.__x & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in fp32
    const float v = float(mant) * 5.9604644775390625e-8f;
    return f32_from_bits(f32_bits(v) | sign);
  }
  if (exp == 31) return f32_from_bits(sign | 0x7f800000u | (mant << 13));  // inf / NaN (payload kept)
  return f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
}

// Round to nearest even (F. Giesen's float_to_half_fast3_rtne): subnormal results through one fp32 addition, which
// rounds to nearest even in the default rounding mode; normal ones by adding half an ulp minus one plus the odd bit.
inline __half __float2half_rn(float f) {
  using namespace eurokernels::sim;
  uint32_t u = f32_bits(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint16_t out;
  if (u >= (127u + 16) << 23) {  // >= 65536: inf (65520 .. 65536 round up to inf below), or NaN
    out = u > 0x7f800000u ? 0x7e00 : 0x7c00;
  } else if (u < 113u << 23) {   // below 2^-14: a half subnormal or zero
    const float magic = f32_from_bits(((127u - 15) + (23 - 10) + 1) << 23);
    out = uint16_t(f32_bits(f32_from_bits(u) + magic) - f32_bits(magic));
  } else {
    const uint32_t odd = (u >> 13) & 1u;
    u += ((15u - 127u) << 23) + 0xfffu + odd;
    out = uint16_t(u >> 13);
  }
  return __half{uint16_t(out | (sign >> 16))};
}

inline float __bfloat162float(__nv_bfloat16 b) { return eurokernels::sim::f32_from_bits(uint32_t(b.__x) << 16); }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t u = eurokernels::sim::f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{uint16_t((u >> 16) | 0x40u)};  // quiet NaN, sign kept
  return __nv_bfloat16{uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

inline __half __float2half(float f) { return __float2half_rn(f); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
