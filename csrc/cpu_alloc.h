// Fresh output tensors for the CPU kernels.
//
// A newly allocated large tensor costs one page fault per 4 KiB page on first write, which on our CI machines is
// more than the kernel's own memory traffic. Where Linux runs transparent huge pages in "madvise" mode (the common
// default), we advise MADV_HUGEPAGE on the 2 MiB-aligned interior of the buffer and then prefault it with
// MADV_POPULATE_WRITE (Linux 5.14+), before the kernel writes it. Why the prefault: huge pages faulted in on first
// write made the first few fresh outputs of every process several times slower than 4 KiB faults (no compaction
// involved), while advised and prefaulted ones cost the same every time (figures in the README's CPU section).
// Advisory only: where a call is refused (older kernel, THP off), the pages fault in on first write as before.
// Prefaulting never changes data: pages already present are left alone. torch's own allocator advises huge pages
// when THP_MEM_ALLOC_ENABLE=1 is set; this applies it to our outputs without changing the process.
#pragma once
#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace eurokernels::cpu {

// Huge-page advice and prefault for [p, p + bytes) when it spans at least 8 MiB (see above).
inline void prepare_fresh(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older headers lack the name, older kernels answer EINVAL
#endif
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p);
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1), hi = (begin + bytes) & ~(kHuge - 1);
  if (bytes >= 4 * kHuge && hi > lo) {
    madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);        // results ignored: advisory
    madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_POPULATE_WRITE);
  }
#else
  (void)p;
  (void)bytes;
#endif
}

inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  prepare_fresh(t.data_ptr(), t.nbytes());
  return t;
}

}  // namespace eurokernels::cpu
