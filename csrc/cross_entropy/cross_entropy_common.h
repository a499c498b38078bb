// Cross-entropy row math shared by the CPU and CUDA kernels (host and device), so the CPU tests exercise it too.
// Conventions (eurokernels/reference.py, cross_entropy / cross_entropy_backward): z = softcap * tanh(x / softcap)
// (or x), lse = logsumexp(z), eps = label smoothing, V = vocab_total (the whole vocabulary, also when the kernel
// sees one shard of it):
//   loss = lse + z_loss * lse^2 - (1 - eps) * z[label] - eps / V * sum(z)
//   dz_j = coef_p * exp(z_j - lse) - coef_u - coef_t * [j == label],   dx_j = dz_j * (1 - (z_j / softcap)^2)
#pragma once
#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace eurokernels::cross_entropy {

struct Options {
  int64_t ignore_index;
  int64_t vocab_start;  // the first global class id held by these logits (0 unless vocab-parallel)
  int64_t vocab_total;  // the number of classes in the whole vocabulary
  float label_smoothing, z_loss;
  float softcap;        // 0: no soft cap
};

// The soft cap: z = softcap * tanh(x / softcap), or x when softcap == 0 (host and device).
EK_HD float soft_cap(float v, float softcap) { return softcap == 0.f ? v : softcap * tanhf(v / softcap); }

// Where a row's label points: ignored, inside these logits (local index), elsewhere in the vocabulary, or out of
// range (an error on CPU; NaN loss and gradient on GPU, which cannot raise without a host sync).
struct Target {
  bool valid, in_shard, bad;
  int64_t local;
};

EK_HD Target classify(int64_t label, int64_t v_local, const Options& o) {
  Target t;
  t.valid = label != o.ignore_index;
  t.local = label - o.vocab_start;
  t.in_shard = t.valid && t.local >= 0 && t.local < v_local;
  t.bad = t.valid && (label < 0 || label >= o.vocab_total);
  return t;
}

// The per-token loss from the row statistics (zt: the capped target logit, or 0 when not in this shard).
EK_HD float row_loss(float lse, float zt, float sum_z, const Target& t, const Options& o) {
  if (!t.valid) return 0.f;
  if (t.bad) return NAN;
  float loss = lse + o.z_loss * lse * lse - (1.f - o.label_smoothing) * (t.in_shard ? zt : 0.f);
  if (o.label_smoothing != 0.f) loss -= o.label_smoothing / float(o.vocab_total) * sum_z;
  return loss;
}

// Coefficients of the gradient formula above for one row: g is the upstream gradient of the row's loss, g_lse
// that of its lse.
struct GradCoef {
  float p, u, t;
};

EK_HD GradCoef grad_coef(float g, float g_lse, float lse, const Target& t, const Options& o) {
  if (!t.valid) g = 0.f;
  GradCoef c;
  c.p = t.bad ? NAN : g * (1.f + 2.f * o.z_loss * lse) + g_lse;
  c.u = g * o.label_smoothing / float(o.vocab_total);
  c.t = t.in_shard ? g * (1.f - o.label_smoothing) : 0.f;
  return c;
}

}  // namespace eurokernels::cross_entropy
