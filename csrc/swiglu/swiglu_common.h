// SwiGLU / GeGLU math shared by the CPU and CUDA kernels (host and device), so the CPU tests exercise it too.
// The CPU kernel's vector code (swiglu_cpu.cpp) is the same formulas in at::vec.
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "host_device.h"

namespace eurokernels::swiglu {

// The activation applied to the gate (values match ACTIVATIONS in eurokernels/ops/swiglu.py).
enum Activation : int {
  kSilu = 0,      // SwiGLU: silu(g) = g * sigmoid(g)
  kGeluTanh = 1,  // GeGLU, tanh approximation: 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))
  kGelu = 2,      // GeGLU, exact: g * Phi(g) = 0.5 g erfc(-g / sqrt(2))
};

// SiLU and GELU-tanh are both g * sigmoid(z) (0.5 (1 + tanh(z/2)) = sigmoid(z)): z = g for SiLU and
// z = 2 sqrt(2/pi) (g + 0.044715 g^3) for GELU-tanh. One exp, no tanh, no cancellation in 1 + tanh for g < 0.
constexpr float kTanhZ1 = 1.5957691216057308f;   // 2 sqrt(2/pi)
constexpr float kTanhZ3 = 0.0713548162726009f;   // 2 sqrt(2/pi) * 0.044715
constexpr float kTanhDZ3 = 0.2140644488178027f;  // 3 * kTanhZ3: z' = kTanhZ1 + kTanhDZ3 g^2
// Beyond |g| = 100, |z| > 7e4: exp(-z) is inf or 0 and sigmoid(z) exactly 0 or 1, as for any larger |g|. z is
// computed from g clamped there, which keeps g^3 and z' finite: the backward never forms 0 * inf for huge |g|.
constexpr float kTanhClamp = 100.f;
constexpr float kSqrtHalf = 0.7071067811865476f;     // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.3989422804014327f;   // 1 / sqrt(2 pi)

// act(g) and, when GRAD, act'(g) = s + act * (1 - s) * z' (sigmoid form) or Phi(g) + g phi(g) (exact GELU). For
// z > 0, 1 - s is e s with e = exp(-z) (1 - s would cancel as s -> 1; for z <= 0, e s could be inf * 0).
// Phi(g) as 0.5 erfc(-g / sqrt(2)) stays accurate for negative g, where 0.5 (1 + erf) cancels.
template <int ACT, bool GRAD>
EK_HD float activation(float g, float* grad) {
  if constexpr (ACT == kGelu) {
    const float cdf = 0.5f * erfcf(-g * kSqrtHalf);
    if constexpr (GRAD) *grad = cdf + g * expf(-0.5f * g * g) * kInvSqrt2Pi;
    return g * cdf;
  } else {
    float z = g, dz = 1.f;
    if constexpr (ACT == kGeluTanh) {
      const float gc = fminf(fmaxf(g, -kTanhClamp), kTanhClamp);
      z = gc * (kTanhZ1 + kTanhZ3 * gc * gc);
      dz = kTanhZ1 + kTanhDZ3 * gc * gc;
    }
    const float e = expf(-z), s = 1.f / (1.f + e);
    const float a = g * s;
    if constexpr (GRAD) *grad = s + a * (z > 0.f ? e * s : 1.f - s) * dz;  // 1 - s, without cancellation
    return a;
  }
}

// Calls f(std::integral_constant<int, ACT>{}) for a runtime activation code (host; the entry points have checked
// that the code is one of the three).
template <typename F>
void dispatch_activation(int64_t activation, F&& f) {
  switch (activation) {
    case kSilu: return f(std::integral_constant<int, kSilu>{});
    case kGeluTanh: return f(std::integral_constant<int, kGeluTanh>{});
    default: return f(std::integral_constant<int, kGelu>{});
  }
}

}  // namespace eurokernels::swiglu
