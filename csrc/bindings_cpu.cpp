// eurokernels._C: the CPU kernels as plain functions. The public torch ops (schemas, fake impls, autograd) are
// declared once in Python (eurokernels/ops/); these are the bodies their `cpu` backend calls. The only file that
// includes torch/extension.h, because that header alone costs most of the build time.
#include <torch/extension.h>

#include "rms_norm/rms_norm.h"
#include "rotary/rotary.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace rn = eurokernels::rms_norm;
  m.def("rms_norm_fwd", &rn::forward_cpu, "RMSNorm forward (CPU)");
  m.def("rms_norm_bwd", &rn::backward_cpu, "RMSNorm backward (CPU)");
  m.def("rotary", &eurokernels::rotary::rotary_cpu, "Rotary embeddings, out of place or in place (CPU)");
}
