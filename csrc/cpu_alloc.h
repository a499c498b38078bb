// Fresh output tensors for the CPU kernels.
//
// A newly allocated large tensor costs one page fault per 4 KiB page on first write, which on our CI machines is
// more than the kernel's own memory traffic (a fresh 64 MB output: ~20 ms of faults vs ~8 ms to write it). Where
// Linux runs transparent huge pages in "madvise" mode (the common default), advising MADV_HUGEPAGE on the
// 2 MiB-aligned interior of the buffer before the first write makes those faults 2 MiB each: ~512x fewer.
// Advisory only: on other systems, or if the kernel refuses, nothing changes. torch's own allocator does the same
// when THP_MEM_ALLOC_ENABLE=1 is set; this applies it to our outputs without changing the process.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace eurokernels::cpu {

inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1), hi = (begin + t.nbytes()) & ~(kHuge - 1);
  if (t.nbytes() >= 4 * kHuge && hi > lo) {
    madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // result ignored: advisory
  }
#endif
  return t;
}

}  // namespace eurokernels::cpu
