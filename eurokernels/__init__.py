"""eurokernels: fused training kernels for Europe's open multilingual LLMs.

Ops (torch.library, namespace ``eurokernels``), each with the backends reference / cpu / triton / cuda:
  rms_norm, apply_rotary (+ rotary_cos_sin for the tables)
Choose a backend per call (``backend=``) or per block (``with eurokernels.use_backend("triton"): ...``);
CPU tensors default to ``cpu``, CUDA tensors to ``triton``.
"""
from ._backend import BACKENDS, default_backend, use_backend
from .ops.rms_norm import rms_norm
from .ops.rotary import apply_rotary, rotary_cos_sin
from . import nn, reference

__all__ = ["BACKENDS", "default_backend", "use_backend", "rms_norm", "apply_rotary", "rotary_cos_sin", "nn", "reference"]
__version__ = "0.1.0"
