// Rotary math shared by the CPU and CUDA kernels (host and device), so the CPU tests exercise it too.
#pragma once
#include <cstdint>

#include "host_device.h"

namespace eurokernels::rotary {

// The position of token t (its flattened [batch * seqlen] index; s is its index along seqlen), or -1 when it has
// none: explicit positions win (pos != nullptr); else packed tokens count from the start of their sequence in
// cu_seqlens (cu != nullptr, n_seqs sequences); else the position is s. A position outside [0, n_positions) (the
// rows of the cos/sin table) or a packed token outside [cu[0], cu[n_seqs]) gives -1: the kernels then write NaN
// instead of reading outside the table (GPU inputs are not checked on the host, to avoid a sync).
EK_HD int64_t token_position(int64_t t, int64_t s, const int64_t* pos, const int32_t* cu, int64_t n_seqs,
                             int64_t n_positions) {
  int64_t p = s;
  if (pos) {
    p = pos[t];
  } else if (cu) {
    if (n_seqs < 1 || t < cu[0] || t >= cu[n_seqs]) return -1;
    int64_t lo = 0, hi = n_seqs - 1;  // the last sequence whose start is <= t
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (cu[mid] <= t) lo = mid; else hi = mid - 1;
    }
    p = t - cu[lo];
  }
  return (p >= 0 && p < n_positions) ? p : -1;
}

// One pair (x1, x2) rotated by the angle whose cosine and sine are c and s (s already negated for the conjugate
// rotation, i.e. the backward): out1 = x1 c - x2 s, out2 = x2 c + x1 s.
EK_HD void rotate_pair(float x1, float x2, float c, float s, float& o1, float& o2) {
  o1 = x1 * c - x2 * s;
  o2 = x2 * c + x1 * s;
}

}  // namespace eurokernels::rotary
