// RMSNorm math shared by the CPU and CUDA kernels (host and device), so the CPU tests exercise it too.
#pragma once

#include "host_device.h"

namespace eurokernels::rms_norm {

// How the forward rounds (see eurokernels/ops/rms_norm.py for the Python-side names).
enum Casting : int {
  kLlama = 0,  // n = round(h * rstd); y = n * round(offset + w)        (HF Llama)
  kGemma = 1,  // y = h * rstd * (offset + w) in fp32, rounded once      (HF Gemma)
  kNone = 2,   // rstd rounded too: y = round(round(h * round(rstd)) * round(offset + w))
};

// One output element in fp32, before the final store rounds it to the output dtype. `round` rounds an fp32 value
// to the input dtype and back (identity for fp32 inputs); `w_eff` is offset + w, already rounded for kLlama/kNone
// by the caller (once per row block, not per element).
template <typename Round>
EK_HD float scale_element(float h, float rstd, float w_eff, bool has_weight, int casting, Round round) {
  if (casting == kGemma) return h * rstd * (has_weight ? w_eff : 1.0f);
  float r = casting == kNone ? round(rstd) : rstd;
  float n = round(h * r);
  return has_weight ? n * w_eff : n;
}

}  // namespace eurokernels::rms_norm
