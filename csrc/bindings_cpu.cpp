// eurokernels._C: the CPU kernels as plain functions. The public torch ops (schemas, fake impls, autograd) are
// declared once in Python (eurokernels/ops/); these are the bodies their `cpu` backend calls. The only file that
// includes torch/extension.h, because that header alone costs most of the build time.
#include <torch/extension.h>

#include "attention/attention.h"
#include "cpu_alloc.h"
#include "cpu_avx512.h"
#include "cpu_exp.h"
#include "cross_entropy/cross_entropy.h"
#include "rms_norm/rms_norm.h"
#include "rotary/rotary.h"
#include "softmax/softmax.h"
#include "swiglu/swiglu.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace rn = eurokernels::rms_norm;
  m.def("rms_norm_fwd", &rn::forward_cpu, "RMSNorm forward (CPU)");
  m.def("rms_norm_bwd", &rn::backward_cpu, "RMSNorm backward (CPU)");
  m.def("rotary_fwd", &eurokernels::rotary::forward_cpu, "Rotary embeddings, out of place or in place (CPU)");
  namespace at_ = eurokernels::attention;
  m.def("attention_fwd", &at_::forward_cpu, "Attention forward (CPU)");
  m.def("attention_bwd", &at_::backward_cpu, "Attention backward (CPU)");
  m.def("cross_entropy_fwd_bwd", &eurokernels::cross_entropy::forward_backward_cpu,
        "Cross-entropy forward / backward (CPU)");
  m.def("prepare_fresh", [](const at::Tensor& t) { eurokernels::cpu::prepare_fresh(t.data_ptr(), t.nbytes()); },
        "Huge pages + prefault for a fresh CPU buffer (cpu_alloc.h); advisory, never changes data");
  m.def("accumulate", &eurokernels::cross_entropy::accumulate_cpu, "acc += part, or out = round(acc + part) (CPU)");
  m.def("softmax_fwd", &eurokernels::softmax::forward_cpu, "Softmax / log-softmax forward (CPU)");
  m.def("softmax_bwd", &eurokernels::softmax::backward_cpu, "Softmax / log-softmax backward (CPU)");
  m.def("swiglu_fwd", &eurokernels::swiglu::forward_cpu, "SwiGLU / GeGLU forward (CPU)");
  m.def("swiglu_bwd", &eurokernels::swiglu::backward_cpu, "SwiGLU / GeGLU backward (CPU)");
  // The AVX-512 exp path of the softmax-family kernels (cpu_avx512.h): on by default where ATen and the CPU have
  // AVX-512; tests switch it off to check the AVX2 path on the same machine.
  // The vector exp of the at::vec (AVX2) path, every element through the vector code: for its accuracy test.
  m.def("vec_exp", [](const at::Tensor& x) {
    TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu(), "x: expected a float32 CPU tensor");
    using Vec = eurokernels::cpu::Vec;
    const at::Tensor xc = x.contiguous().reshape(-1);
    const int64_t n = xc.numel(), padded = (n + Vec::size() - 1) / Vec::size() * Vec::size();
    at::Tensor buf = at::zeros({padded}, xc.options());
    buf.narrow(0, 0, n).copy_(xc);
    float* p = buf.data_ptr<float>();
    for (int64_t i = 0; i < padded; i += Vec::size()) eurokernels::cpu::exp(Vec::loadu(p + i)).store(p + i);
    return buf.narrow(0, 0, n).view(x.sizes()).clone();
  }, "exp of a float32 tensor through the CPU kernels' vector exp (cpu_exp.h)");
#if EK_HAVE_AVX512
  m.def("cpu_avx512_enabled", &eurokernels::cpu::avx512::enabled, "Whether the AVX-512 exp path is on");
  m.def("set_cpu_avx512", &eurokernels::cpu::avx512::set_enabled, "Switch the AVX-512 exp path; returns the state");
#else
  m.def("cpu_avx512_enabled", [] { return false; }, "Whether the AVX-512 exp path is on");
  m.def("set_cpu_avx512", [](bool) { return false; }, "Switch the AVX-512 exp path; returns the state");
#endif
}
