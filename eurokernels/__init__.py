"""eurokernels: fused training kernels for Europe's open multilingual LLMs.

Ops (torch.library, namespace ``eurokernels``), each with the backends reference / cpu / triton / cuda:
  rms_norm; apply_rotary (+ rotary_cos_sin for the tables); attention (no cuda backend yet);
  softmax, log_softmax (no cuda backend yet), cross_entropy, linear_cross_entropy,
  vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy; swiglu, geglu
Choose a backend per call (``backend=``) or per block (``with eurokernels.use_backend("triton"): ...``);
CPU tensors default to ``cpu``, CUDA tensors to ``triton``.
"""
from ._backend import BACKENDS, default_backend, use_backend
from .ops.rms_norm import rms_norm
from .ops.rotary import apply_rotary, rotary_cos_sin
from .ops.attention import attention
from .ops.cross_entropy import cross_entropy
from .ops.linear_cross_entropy import linear_cross_entropy
from .ops.softmax import log_softmax, softmax
from .ops.vocab_parallel import vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy
from .ops.swiglu import geglu, swiglu
from . import nn, reference

__all__ = ["BACKENDS", "default_backend", "use_backend", "rms_norm", "apply_rotary", "rotary_cos_sin", "attention",
           "cross_entropy", "linear_cross_entropy", "vocab_parallel_cross_entropy",
           "vocab_parallel_linear_cross_entropy", "softmax", "log_softmax", "swiglu", "geglu", "nn", "reference"]
__version__ = "0.1.0"
