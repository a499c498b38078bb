// Vector helpers for the CPU kernels: load/store float, bf16 and fp16 rows as fp32 vectors (at::vec, so AVX2 /
// AVX-512 / NEON as compiled), and round fp32 to a storage dtype and back. Every CPU kernel works in steps of
// kStep = 2 * Vec::size() elements because one Vectorized<bf16/fp16> converts to exactly two fp32 vectors.
#pragma once
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <tuple>
#include <type_traits>

namespace eurokernels::cpu {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kStep = 2 * Vec::size();

template <typename T>
inline std::tuple<Vec, Vec> load2(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return {Vec::loadu(p), Vec::loadu(p + Vec::size())};
  } else {
    return at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p));
  }
}

template <typename T>
inline void store2(T* p, const Vec& a, const Vec& b) {
  if constexpr (std::is_same_v<T, float>) {
    a.store(p);
    b.store(p + Vec::size());
  } else {
    at::vec::convert_from_float<T>(a, b).store(p);
  }
}

// Round fp32 values to T and back (identity for float): reproduces the rounding a model in T would do.
template <typename T>
inline std::tuple<Vec, Vec> round2(const Vec& a, const Vec& b) {
  if constexpr (std::is_same_v<T, float>) {
    return {a, b};
  } else {
    return at::vec::convert_to_float<T>(at::vec::convert_from_float<T>(a, b));
  }
}

// Fill a row with one value (a zero gradient, or NaN for a row whose lse is NaN).
template <typename T>
inline void fill_row(T* p, int64_t n, float v) {
  const Vec vv(v);
  int64_t i = 0;
  for (; i + kStep <= n; i += kStep) store2(p + i, vv, vv);
  for (; i < n; ++i) p[i] = static_cast<T>(v);
}

template <typename T>
inline float round1(float v) {
  return static_cast<float>(static_cast<T>(v));
}

}  // namespace eurokernels::cpu
