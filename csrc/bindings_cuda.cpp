// eurokernels._cuda: the CUDA C++ kernels as plain functions (see bindings_cpu.cpp for why not torch ops). The same
// file makes eurokernels._cuda_sim, the simulation build (csrc/sim), which adds its controls and test kernels.
#include <torch/extension.h>

#include "attention/attention.h"
#include "attention/attention_launch.h"
#include "cross_entropy/cross_entropy.h"
#include "rms_norm/rms_norm.h"
#include "rotary/rotary.h"
#include "softmax/softmax.h"
#include "swiglu/swiglu.h"

#if defined(EUROKERNELS_CUDA_SIM)
namespace eurokernels::sim {
void bind(pybind11::module_& m);  // sim/sim_bindings.cpp
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace rn = eurokernels::rms_norm;
  m.def("rms_norm_fwd", &rn::forward_cuda, "RMSNorm forward (CUDA)");
  m.def("rms_norm_bwd", &rn::backward_cuda, "RMSNorm backward (CUDA)");
  m.def("rotary_fwd", &eurokernels::rotary::forward_cuda, "Rotary embeddings, out of place or in place (CUDA)");
  m.def("cross_entropy_fwd_bwd", &eurokernels::cross_entropy::forward_backward_cuda,
        "Cross-entropy forward / backward (CUDA)");
  m.def("softmax_fwd", &eurokernels::softmax::forward_cuda, "Softmax / log-softmax forward (CUDA)");
  m.def("softmax_bwd", &eurokernels::softmax::backward_cuda, "Softmax / log-softmax backward (CUDA)");
  m.def("swiglu_fwd", &eurokernels::swiglu::forward_cuda, "SwiGLU / GeGLU forward (CUDA)");
  m.def("swiglu_bwd", &eurokernels::swiglu::backward_cuda, "SwiGLU / GeGLU backward (CUDA)");
  m.def("attention_fwd", &eurokernels::attention::forward_cuda, "Attention forward, packed (CUDA)");
  m.def("attention_bwd", &eurokernels::attention::backward_cuda, "Attention backward, packed (CUDA)");
  m.def("attention_dynamic_smem", [](const std::string& kernel, int64_t head_dim_class, int64_t elem_bytes) {
    return eurokernels::attention::dynamic_smem(kernel.c_str(), int(head_dim_class), int(elem_bytes));
  }, "Dynamic shared memory (bytes) the launchers give an attention kernel of a head-dim class (0: none)");
#if defined(EUROKERNELS_CUDA_SIM)
  eurokernels::sim::bind(m);
#endif
}
